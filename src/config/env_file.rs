//! `env_file = ".env"` (or a list, later files winning): dotenv files read when the workflow is
//! loaded, relative to the workflow file. Their values are literal (never templated) and `env`
//! wins over them. The file's text is not kept in the state dir (only the workflow file is), nor
//! in a cluster's database: a node that runs another node's task reads the files itself
//! ([`read_all`], docs/cluster-design.md, "`env_file` in a cluster").

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::parse::{JobDraft, TaskFields};
use super::values::{Entry, Located, Reader};

/// The files as written, and the variables read from them (once loaded).
#[derive(Debug, Clone, Default)]
pub(super) struct EnvFiles {
    pub paths: Vec<Located<String>>,
    /// `paths` made absolute (under the workflow file's folder), once loaded.
    pub files: Vec<PathBuf>,
    pub vars: BTreeMap<String, String>,
}

/// The most one env file may hold: it is configuration, not data.
const MAX_ENV_FILE_BYTES: u64 = 1024 * 1024;

/// `env_file`: a path or an array of paths.
pub(super) fn read_paths(r: &mut Reader, e: &Entry) -> Option<EnvFiles> {
    let paths = if e.item.as_str().is_some() { vec![r.located_string(e)?] } else { r.string_array(e)? };
    if let Some(empty) = paths.iter().find(|p| p.value.trim().is_empty()) {
        r.error(empty.at, "`env_file` must name a file");
        return None;
    }
    Some(EnvFiles { paths, files: Vec::new(), vars: BTreeMap::new() })
}

/// Reads every env file named in `[defaults]` and the tasks; a problem is reported where the
/// file is named.
pub(super) fn load_all(r: &mut Reader, base_dir: &Path, defaults: &mut TaskFields, jobs: &mut [JobDraft]) {
    let fields =
        std::iter::once(defaults).chain(jobs.iter_mut().flat_map(|j| j.tasks.iter_mut().map(|t| &mut t.fields)));
    for field in fields {
        if let Some(files) = field.env_file.as_mut() {
            for path in &files.paths {
                let full = base_dir.join(&path.value);
                match read_one(&full) {
                    Ok(vars) => files.vars.extend(vars),
                    Err(message) => r.error(path.at, format!("env_file `{}`: {message}", path.value)),
                }
                files.files.push(full);
            }
        }
    }
}

/// The variables of the env files `files` (absolute, as [`crate::config::TaskDef::env_files`]
/// holds them), later files winning: what loading the workflow reads, read again now. An
/// error names the file and never quotes a line of it.
pub fn read_all(files: &[PathBuf]) -> Result<BTreeMap<String, String>, String> {
    let mut vars = BTreeMap::new();
    for file in files {
        vars.extend(read_one(file).map_err(|e| format!("env_file {}: {e}", file.display()))?);
    }
    Ok(vars)
}

/// One dotenv file's variables, in file order (a later line wins).
fn read_one(full: &Path) -> Result<Vec<(String, String)>, String> {
    let shown = full.display();
    let text = match std::fs::metadata(full) {
        Ok(m) if m.len() > MAX_ENV_FILE_BYTES => return Err(format!("{shown} is larger than 1 MiB")),
        Ok(_) => std::fs::read_to_string(full).map_err(|e| format!("cannot read {shown}: {e}"))?,
        Err(e) => return Err(format!("cannot read {shown}: {e}")),
    };
    let mut vars = Vec::new();
    for item in dotenvy::from_read_iter(text.as_bytes()) {
        match item {
            Ok(pair) => vars.push(pair),
            Err(dotenvy::Error::LineParse(line, _)) => {
                // The line is not echoed: an env file often holds secrets.
                let number = text.lines().position(|l| l.contains(line.trim())).map(|n| format!(" {}", n + 1));
                return Err(format!("line{} is not `KEY=value`", number.unwrap_or_default()));
            }
            Err(e) => return Err(format!("{shown}: {e}")),
        }
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn load(dir: &Path, text: &str) -> Result<crate::config::Workflow, String> {
        let path = dir.join("wf.toml");
        std::fs::write(&path, text).expect("write");
        crate::config::load(&path).map_err(|e| e.to_string())
    }

    #[test]
    fn env_files_load_in_order_and_env_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(".env"), "# comment\nA=from-file\nB='quoted {{ not a template }}'\nC=1\n")
            .expect("write");
        std::fs::write(dir.path().join("more.env"), "C=2\nexport D=\"d\"\n").expect("write");
        let wf = load(
            dir.path(),
            "[defaults]\nenv_file = \".env\"\n[jobs.j.tasks.a]\nrun = \"x\"\nenv = { A = \"from-env\" }\n\
             [jobs.j.tasks.b]\nrun = \"x\"\nenv_file = [\".env\", \"more.env\"]\n",
        )
        .expect("valid");
        let (a, b) = (&wf.jobs[0].tasks[0], &wf.jobs[0].tasks[1]);
        assert_eq!(a.env_file["A"], "from-file");
        assert_eq!(a.env["A"], "from-env", "env is applied over env_file when the task starts");
        assert_eq!(a.env_file["B"], "quoted {{ not a template }}");
        assert_eq!((b.env_file["C"].as_str(), b.env_file["D"].as_str()), ("2", "d"), "later files win");
    }

    #[test]
    fn a_missing_or_bad_env_file_is_a_positioned_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = load(dir.path(), "[jobs.j.tasks.a]\nrun = \"x\"\nenv_file = \"nope.env\"\n").expect_err("missing");
        assert!(err.contains("wf.toml:3:12: env_file `nope.env`: cannot read "), "{err}");
        assert!(err.contains("nope.env: No such file"), "{err}");
        std::fs::write(dir.path().join("bad.env"), "A=1\nSECRET VALUE here\n").expect("write");
        let err = load(dir.path(), "[jobs.j.tasks.a]\nrun = \"x\"\nenv_file = [\"bad.env\"]\n").expect_err("bad");
        assert!(err.contains("wf.toml:3:13: env_file `bad.env`: line 2 is not `KEY=value`"), "{err}");
        assert!(!err.contains("SECRET"), "the line is not echoed: {err}");
        let err = load(dir.path(), "[jobs.j.tasks.a]\nrun = \"x\"\nenv_file = 3\n").expect_err("type");
        assert!(err.contains("3:12: `env_file` must be an array of strings"), "{err}");
    }
}
