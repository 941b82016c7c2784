//! The workflow file: reading, parsing and validating it into [`Workflow`].
//!
//! Validation reports every problem at once, each with the `LINE:COL` it is about, because a
//! user fixing a file one error per run is slow and annoying.

pub mod advice;
mod checks;
mod control;
mod env_file;
mod expect;
mod hooks;
mod params;
mod parse;
pub mod pricing;
pub mod schema;
pub mod template;
pub mod types;
mod values;

use std::fmt;
use std::path::{Path, PathBuf};

pub use env_file::read_all as read_env_files;
pub use types::*;

/// One problem in a workflow file; `line` and `col` are 1-based (`col` counts characters).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diagnostic {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

/// All problems found in one file, sorted by position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics {
    /// The file, as given.
    pub path: PathBuf,
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    /// Sorts by position and drops exact duplicates (a bad `[defaults]` value is seen once per task).
    /// Messages quote the file, which is untrusted: they are sanitized (no terminal escapes or
    /// bidi overrides reach the terminal) and cut to [`MAX_MESSAGE_CHARS`].
    pub fn new(path: PathBuf, mut items: Vec<Diagnostic>) -> Self {
        for item in &mut items {
            item.message = bounded_message(&item.message);
        }
        items.sort();
        items.dedup();
        Diagnostics { path, items }
    }
}

/// The longest diagnostic message printed; a longer one keeps its head and says how much was cut.
pub const MAX_MESSAGE_CHARS: usize = 2000;

fn bounded_message(message: &str) -> String {
    let clean = crate::sanitize::sanitize(message);
    match clean.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}… ({} more characters)", &clean[..cut], clean[cut..].chars().count()),
        None => clean,
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut items: Vec<&Diagnostic> = self.items.iter().collect();
        items.sort();
        // A file name is untrusted too (a checked-out repository names it).
        let path = crate::sanitize::sanitize(&self.path.display().to_string());
        for (i, d) in items.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{path}:{}:{}: {}", d.line, d.col, d.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read workflow file {}: {reason}", path.display())]
    Io { path: PathBuf, reason: String },
    /// Each line of the message already starts with the file name.
    #[error("{0}")]
    Invalid(Diagnostics),
}

/// Reads and validates the workflow file at `path`.
pub fn load(path: &Path) -> Result<Workflow, LoadError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| LoadError::Io { path: path.to_path_buf(), reason: e.to_string() })?;
    parse_file(path, &text).map_err(LoadError::Invalid)
}

/// Parses and validates workflow text; `path` names the file in diagnostics and anchors `cwd`.
/// Files it refers to (`expect.json_schema`) are not read: a stored definition parses the same
/// whatever became of them since.
pub fn parse(path: &Path, text: &str) -> Result<Workflow, Diagnostics> {
    parse::parse_workflow(path, text, false)
}

/// [`parse`] of the workflow file at `path` as it is on disk now, also checking the files it
/// refers to (`gaffer validate`, `run`, `serve`).
pub fn parse_file(path: &Path, text: &str) -> Result<Workflow, Diagnostics> {
    parse::parse_workflow(path, text, true)
}

pub use expect::load_schema;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnostics_display_sorted_with_file() {
        let d = Diagnostics::new(
            PathBuf::from("wf.toml"),
            vec![
                Diagnostic { line: 7, col: 1, message: "b".into() },
                Diagnostic { line: 2, col: 5, message: "a".into() },
            ],
        );
        assert_eq!(d.to_string(), "wf.toml:2:5: a\nwf.toml:7:1: b");
    }

    #[test]
    fn load_reports_missing_file_by_name() {
        let err = load(Path::new("/nonexistent/gaffer.toml")).expect_err("should fail");
        let msg = err.to_string();
        assert!(msg.starts_with("cannot read workflow file /nonexistent/gaffer.toml:"), "{msg}");
    }

    #[test]
    fn load_reads_a_file() {
        let dir = tempfile::tempdir().expect("test setup");
        let path = dir.path().join("wf.toml");
        std::fs::write(&path, "[jobs.j.tasks.t]\nrun = \"true\"\n").expect("test setup");
        let wf = load(&path).expect("test setup");
        assert_eq!(wf.jobs[0].tasks[0].cwd, dir.path());
        std::fs::write(&path, "[jobs.j.tasks.t]\nrun = 1\n").expect("test setup");
        let err = load(&path).expect_err("should fail").to_string();
        assert!(err.contains("wf.toml:2:7: `run` must be a string"), "{err}");
    }
}

/// The fixtures under `tests/fixtures/` are shared with the CLI tests; keep them honest here.
#[cfg(test)]
mod fixture_tests {
    use super::*;

    fn fixtures(kind: &str) -> Vec<PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(kind);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("fixture folder")
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        files
    }

    #[test]
    fn valid_fixtures_load() {
        let files = fixtures("valid");
        assert!(!files.is_empty());
        for path in files {
            if let Err(e) = load(&path) {
                panic!("{} should be valid:\n{e}", path.display());
            }
        }
    }

    #[test]
    fn invalid_fixtures_report_their_expected_diagnostic() {
        let files = fixtures("invalid");
        assert!(!files.is_empty());
        for path in files {
            let text = std::fs::read_to_string(&path).expect("read fixture");
            let expected = text
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("# expect: "))
                .unwrap_or_else(|| panic!("{} lacks a `# expect:` first line", path.display()));
            let report = load(&path).expect_err("fixture should be invalid").to_string();
            let wanted = format!("{}:{expected}", path.display());
            assert!(report.contains(&wanted), "{}: expected `{wanted}` in:\n{report}", path.display());
        }
    }
}
