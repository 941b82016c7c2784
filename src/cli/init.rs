//! `gaffer init` (a commented starter workflow) and `gaffer schema` (the workflow file's JSON
//! Schema, for editors).

use std::io::Write;
use std::path::Path;

use super::CliError;

/// What `gaffer init` writes: valid as it stands (a test checks it), with the common keys
/// shown and explained.
pub const STARTER: &str = include_str!("../../assets/starter.toml");

/// Writes the starter workflow to `file`; an existing file is never overwritten.
pub fn init(file: &Path) -> Result<(), CliError> {
    let shown = file.display();
    let mut out = match std::fs::OpenOptions::new().write(true).create_new(true).open(file) {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(CliError::Usage(format!("{shown} already exists; nothing was written (name another file)")));
        }
        Err(e) => return Err(CliError::Failed(format!("cannot create {shown}: {e}"))),
    };
    out.write_all(STARTER.as_bytes()).map_err(|e| CliError::Failed(format!("cannot write {shown}: {e}")))?;
    outln!("wrote {shown}: check it with `gaffer validate {shown}`, run it with `gaffer run {shown}`");
    Ok(())
}

/// Prints the JSON Schema of the workflow file.
pub fn schema() -> Result<(), CliError> {
    let text =
        serde_json::to_string_pretty(&crate::config::schema::json()).map_err(|e| CliError::Failed(e.to_string()))?;
    outln!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_starter_is_a_valid_workflow() {
        let workflow = crate::config::parse(Path::new("/project/gaffer.toml"), super::STARTER);
        assert!(workflow.is_ok(), "{}", workflow.err().map(|d| d.to_string()).unwrap_or_default());
    }

    use std::path::Path;
}
