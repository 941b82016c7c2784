//! `env_file` values in a cluster: an env file usually holds API keys, so its values never go
//! through the database. The owner that renders a queued task run's next attempt into
//! `task_runs.spec` takes them out of its `env` and sends the files' paths instead
//! (`QueuedSpec::env_files`); the node that runs the attempt puts the values back from its own
//! disk: those it read from the same files when it loaded its own workflow (the same task
//! naming the same files, as on one node), else the files read now. A node that cannot read a
//! file fails the attempt, naming the job run, the task and the file (docs/cluster-design.md,
//! "`env_file` in a cluster").

use super::QueuedSpec;
use crate::config::{TaskDef, Workflow};

/// The owner's side: `spec` (rendered from `def`, its `env_file` values first) loses those
/// values and names their files instead.
pub fn hold_back(spec: &mut QueuedSpec, def: &TaskDef) -> Result<(), String> {
    if def.env_file.is_empty() && def.env_files.is_empty() {
        return Ok(());
    }
    if def.env_files.is_empty() {
        return Err("its `env_file` values name no file to read them from".into());
    }
    let n = def.env_file.len();
    let first = spec.env.get(..n).ok_or("the rendered env is shorter than the task's `env_file`")?;
    if !first.iter().zip(&def.env_file).all(|((name, _), (key, _))| name == key) {
        return Err("the rendered env does not begin with the task's `env_file` variables".into());
    }
    spec.env.drain(..n);
    spec.env_files = def.env_files.clone();
    Ok(())
}

/// The runner's side: puts the values of `spec.env_files` back in front of its `env` (so `env`
/// still wins), from what `workflow` (this node's) read of the same files for the same task,
/// else read now. The error names the file and never quotes a line of it.
pub fn read_into(spec: &mut QueuedSpec, workflow: &Workflow) -> Result<(), String> {
    if spec.env_files.is_empty() {
        return Ok(());
    }
    let tasks = workflow.jobs.iter().filter(|j| j.name == spec.job).flat_map(|j| &j.tasks);
    let loaded = tasks.into_iter().find(|t| t.name == spec.task && t.env_files == spec.env_files);
    let vars = match loaded {
        Some(def) => def.env_file.clone(),
        None => crate::config::read_env_files(&spec.env_files).map_err(|e| {
            format!("{e} (env_file values are never stored: every node that may run it reads the file at that path)")
        })?,
    };
    let mut env: Vec<(String, String)> = vars.into_iter().collect();
    env.append(&mut spec.env);
    spec.env = env;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn load(dir: &Path, text: &str) -> Workflow {
        let path = dir.join("wf.toml");
        std::fs::write(&path, text).expect("write");
        crate::config::load(&path).expect("valid")
    }

    /// What `render_spec` gives for task `t` of job `j`: the `env_file` values first, then
    /// `env`, then what the engine adds.
    fn rendered(def: &TaskDef) -> QueuedSpec {
        let mut env: Vec<(String, String)> = def.env_file.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        env.extend(def.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.push(("GAFFER_MODEL".into(), "m1".into()));
        let spec = crate::executor::AttemptSpec {
            job: "j".into(),
            task: def.name.clone(),
            job_run: 7,
            task_run: 9,
            attempt: 1,
            command: def.command.clone(),
            env,
            stdin: None,
            cwd: def.cwd.clone(),
            state_dir: "/s".into(),
            log_path: "/s/l".into(),
            log_cap_bytes: 1,
            output_limits: Default::default(),
            cost_source: def.cost,
        };
        QueuedSpec::of(&spec, def.timeout, def.heartbeat_timeout, None)
    }

    const FLOW: &str =
        "[jobs.j.tasks.t]\nrun = \"x\"\nenv_file = [\".env\", \"more.env\"]\nenv = { A = \"from-env\" }\n";

    #[test]
    fn the_values_stay_home_and_the_runner_puts_them_back_where_they_were() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(".env"), "API_KEY=sk-live-0123\nA=from-file\n").expect("write");
        std::fs::write(dir.path().join("more.env"), "B=2\n").expect("write");
        let workflow = load(dir.path(), FLOW);
        let def = &workflow.jobs[0].tasks[0];
        let full = rendered(def);
        let mut sent = full.clone();
        hold_back(&mut sent, def).expect("held back");
        let stored = serde_json::to_string(&sent).expect("json");
        assert!(!stored.contains("sk-live-0123") && !stored.contains("from-file"), "{stored}");
        assert_eq!(sent.env_files, [dir.path().join(".env"), dir.path().join("more.env")]);
        assert_eq!(sent.env[0], ("A".to_string(), "from-env".to_string()));

        // A runner that loaded the same files for the same task uses what it read then.
        let mut runner = sent.clone();
        std::fs::write(dir.path().join(".env"), "API_KEY=rotated\n").expect("write");
        read_into(&mut runner, &workflow).expect("reads");
        assert_eq!(runner, QueuedSpec { env_files: runner.env_files.clone(), ..full.clone() });

        // One whose workflow does not name them reads them now (`env` still last, so it wins).
        let other = load(tempfile::tempdir().expect("tempdir").path(), "[jobs.j.tasks.t]\nrun = \"x\"\n");
        let mut runner = sent.clone();
        read_into(&mut runner, &other).expect("reads");
        let names: Vec<&str> = runner.env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["API_KEY", "B", "A", "GAFFER_MODEL"]);
        assert_eq!(runner.env[0].1, "rotated");
    }

    #[test]
    fn a_runner_without_the_file_says_which_and_quotes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(".env"), "API_KEY=sk-live-0123\n").expect("write");
        std::fs::write(dir.path().join("more.env"), "B=2\n").expect("write");
        let workflow = load(dir.path(), FLOW);
        let mut sent = rendered(&workflow.jobs[0].tasks[0]);
        hold_back(&mut sent, &workflow.jobs[0].tasks[0]).expect("held back");
        let other = load(tempfile::tempdir().expect("tempdir").path(), "[jobs.j.tasks.t]\nrun = \"x\"\n");

        std::fs::remove_file(dir.path().join("more.env")).expect("rm");
        let err = read_into(&mut sent.clone(), &other).expect_err("no file");
        let file = dir.path().join("more.env").display().to_string();
        assert!(err.starts_with(&format!("env_file {file}: cannot read {file}: No such file")), "{err}");
        assert!(err.contains("every node that may run it reads the file at that path"), "{err}");

        std::fs::write(dir.path().join("more.env"), "B=2\nsk-live-0123 oops\n").expect("write");
        let err = read_into(&mut sent, &other).expect_err("bad line");
        assert!(err.contains("line 2 is not `KEY=value`") && !err.contains("sk-live"), "{err}");
    }

    #[test]
    fn a_task_without_env_file_goes_as_it_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let workflow = load(dir.path(), "[jobs.j.tasks.t]\nrun = \"x\"\nenv = { A = \"1\" }\n");
        let def = &workflow.jobs[0].tasks[0];
        let mut sent = rendered(def);
        let before = sent.clone();
        hold_back(&mut sent, def).expect("nothing to hold back");
        read_into(&mut sent, &workflow).expect("nothing to read");
        assert_eq!(sent, before);
    }
}
