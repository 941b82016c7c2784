//! `on_failure`, `on_dead_letter`, `on_budget` on `[jobs.X]` and `[queues.Q]`: shell text, or
//! `{ run = "…", timeout = "10s" }` to change how long it may take (default 30 s).

use std::time::Duration;

use super::types::{Hook, HookKey, Hooks};
use super::values::{Entry, Reader};

/// How long a hook may run before its process group is killed, unless it says otherwise.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(30);
/// A hook that needs longer than this is a job, not a notification.
const MAX_HOOK_TIMEOUT: Duration = Duration::from_secs(3600);
pub(super) const HOOK_TABLE_KEYS: &[&str] = &["run", "timeout"];

/// Reads `e` into `hooks` if it is a hook key; false if it is not one (the caller reports it).
pub(super) fn read(r: &mut Reader, e: &Entry, hooks: &mut Hooks) -> bool {
    let Some(key) = HookKey::ALL.into_iter().find(|k| k.as_str() == e.name) else { return false };
    let hook = read_hook(r, e);
    let slot = match key {
        HookKey::OnFailure => &mut hooks.on_failure,
        HookKey::OnDeadLetter => &mut hooks.on_dead_letter,
        HookKey::OnBudget => &mut hooks.on_budget,
    };
    *slot = hook;
    true
}

fn read_hook(r: &mut Reader, e: &Entry) -> Option<Hook> {
    let (run, timeout) = if e.item.as_str().is_some() {
        (r.string(e), Some(DEFAULT_HOOK_TIMEOUT))
    } else if let Some(table) = e.item.as_table_like() {
        let (mut run, mut timeout) = (None, Some(DEFAULT_HOOK_TIMEOUT));
        for field in r.entries(table, e.at) {
            match field.name {
                "run" => run = r.string(&field),
                "timeout" => timeout = read_timeout(r, &field),
                _ => r.unknown_key(&field, &format!("`{}`", e.name), HOOK_TABLE_KEYS),
            }
        }
        if run.is_none() && table.get("run").is_none() {
            r.error(e.at, format!("`{}` needs `run` (shell text)", e.name));
        }
        (run, timeout)
    } else {
        r.error(e.at, format!("`{}` must be shell text, or a table {{ run = \"…\", timeout = \"30s\" }}", e.name));
        return None;
    };
    let run = run?;
    if run.trim().is_empty() {
        r.error(e.at, format!("`{}` must not be empty", e.name));
        return None;
    }
    Some(Hook { run, timeout: timeout? })
}

fn read_timeout(r: &mut Reader, e: &Entry) -> Option<Duration> {
    let timeout = r.duration(e, true)?;
    if timeout > MAX_HOOK_TIMEOUT {
        r.error(e.at, format!("`timeout` of a hook must be at most {}", humantime::format_duration(MAX_HOOK_TIMEOUT)));
        return None;
    }
    Some(timeout)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn parse(text: &str) -> Result<crate::config::Workflow, String> {
        crate::config::parse(Path::new("wf.toml"), text).map_err(|d| d.to_string())
    }

    #[test]
    fn hooks_on_jobs_and_queues() {
        let wf = parse(
            r#"
[queues.llm]
on_dead_letter = "notify-dlq"
on_failure = { run = "page-me", timeout = "5s" }
[jobs.j]
on_failure = "echo failed"
on_budget = "echo budget"
[jobs.j.tasks.t]
run = "true"
"#,
        )
        .expect("valid");
        let job = &wf.jobs[0].hooks;
        assert_eq!(
            job.get(HookKey::OnFailure).map(|h| (h.run.as_str(), h.timeout)),
            Some(("echo failed", DEFAULT_HOOK_TIMEOUT))
        );
        assert_eq!(job.get(HookKey::OnBudget).map(|h| h.run.as_str()), Some("echo budget"));
        assert!(job.on_dead_letter.is_none());
        let llm = &wf.queues["llm"].hooks;
        assert_eq!(llm.get(HookKey::OnDeadLetter).map(|h| h.run.as_str()), Some("notify-dlq"));
        assert_eq!(llm.get(HookKey::OnFailure).map(|h| h.timeout), Some(Duration::from_secs(5)));
        assert!(wf.queues["default"].hooks.is_empty());
    }

    #[test]
    fn bad_hooks_are_reported_where_they_are() {
        let cases = [
            ("[jobs.j]\non_failure = 3\n", "wf.toml:2:14: `on_failure` must be shell text, or a table"),
            ("[jobs.j]\non_failure = \"  \"\n", "wf.toml:2:14: `on_failure` must not be empty"),
            ("[jobs.j]\non_budget = { timeout = \"1s\" }\n", "wf.toml:2:13: `on_budget` needs `run`"),
            (
                "[jobs.j]\non_budget = { run = \"x\", tmeout = \"1s\" }\n",
                "wf.toml:2:26: unknown key `tmeout` in `on_budget`",
            ),
            (
                "[jobs.j]\non_budget = { run = \"x\", timeout = \"2h\" }\n",
                "wf.toml:2:36: `timeout` of a hook must be at most 1h",
            ),
            ("[queues.q]\non_dead_leter = \"x\"\n", "did you mean `on_dead_letter`?"),
            ("[jobs.j]\non_failur = \"x\"\n", "did you mean `on_failure`?"),
        ];
        for (head, want) in cases {
            let text = format!("{head}[jobs.j.tasks.t]\nrun = \"true\"\n");
            let got = parse(&text).expect_err("invalid");
            assert!(got.contains(want), "{head}: want `{want}` in:\n{got}");
        }
    }
}
