//! Secret params in a cluster (SPEC: a secret lives in memory only, never stored). A queued
//! task run's next attempt travels to the node that runs it through `task_runs.spec`, so the
//! owner does not render the fields that read a secret param (`args` items, `env` values,
//! `stdin`): they go as their templates, with the rest of what templates see, and the node
//! that runs the attempt renders them from the secrets it was given itself (`serve --param`,
//! the param's environment variable), as a node that resumes or adopts a run does. A runner
//! without them fails the attempt, naming the job run and the param (docs/cluster-design.md,
//! "Secret params in a cluster").

use serde::{Deserialize, Serialize};

use super::QueuedSpec;
use crate::config::template::{self, TemplateContext};
use crate::config::{CommandSpec, TaskDef};
use crate::model::params::{self, MASK, Values};

/// The fields of a queued spec left for its runner to render.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretFields {
    pub fields: Vec<SecretField>,
    /// The secret params they read, each once.
    pub names: Vec<String>,
    /// What their templates see besides the secrets: a `TemplateContext` as JSON (a fan-out
    /// item is any JSON, which the store's codec cannot carry as such).
    pub context: String,
}

/// A field of the spec (its value there is `***` until rendered) and its template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretField {
    pub at: FieldAt,
    pub template: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FieldAt {
    /// `QueuedSpec::argv[i]`.
    Arg(u32),
    /// `QueuedSpec::env[i]`: its value.
    Env(u32),
    Stdin,
}

/// The owner's side: takes the fields of `spec` (rendered from `def` against `ctx`, which holds
/// the secrets among its params) whose rendering depends on one of `secret_names`, leaving
/// `***` in their place. `None` when no field reads a secret: the spec goes as it is.
/// `compensation`: the spec runs the task's `compensate` (no `args`, no `stdin`).
pub fn hold_back(
    spec: &mut QueuedSpec,
    def: &TaskDef,
    compensation: bool,
    ctx: &TemplateContext,
    secret_names: &[&str],
) -> Result<Option<SecretFields>, String> {
    let mut fields = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let mut take = |at: FieldAt, text: &str, slot: &mut String| {
        let read = params::secrets_read(text, ctx, secret_names);
        if read.is_empty() {
            return;
        }
        names
            .extend(read.into_iter().filter(|n| !names.iter().any(|m| m == n)).map(str::to_string).collect::<Vec<_>>());
        fields.push(SecretField { at, template: text.to_string() });
        *slot = MASK.to_string();
    };
    if let (false, CommandSpec::Argv(items)) = (compensation, &def.command) {
        for (k, text) in items.iter().enumerate() {
            let slot = spec.argv.get_mut(k).ok_or("the rendered args are shorter than the task's")?;
            take(FieldAt::Arg(k as u32), text, slot);
        }
    }
    // As `render_spec` lays out `env`: `env`'s values in order, once the `env_file` values that
    // came first are held back (`cluster::env_files`, done before this).
    for (at, (key, text)) in def.env.iter().enumerate() {
        match spec.env.get_mut(at) {
            Some((name, slot)) if name == key => take(FieldAt::Env(at as u32), text, slot),
            _ => return Err(format!("the rendered env has no `{key}` where the task's is")),
        }
    }
    if let (false, Some(text)) = (compensation, &def.stdin) {
        let mut slot = spec.stdin.take().unwrap_or_default();
        take(FieldAt::Stdin, text, &mut slot);
        spec.stdin = Some(slot);
    }
    if fields.is_empty() {
        return Ok(None);
    }
    let mut seen = ctx.clone();
    seen.params.retain(|name, _| !secret_names.contains(&name.as_str()));
    let context = serde_json::to_string(&seen).map_err(|e| e.to_string())?;
    Ok(Some(SecretFields { fields, names, context }))
}

impl SecretFields {
    /// The runner's side: renders the fields into `spec` with `secrets` (those of
    /// [`SecretFields::names`]). An error names the field and never quotes a secret.
    pub fn render_into(&self, spec: &mut QueuedSpec, secrets: &Values) -> Result<(), String> {
        let mut ctx: TemplateContext =
            serde_json::from_str(&self.context).map_err(|e| format!("its template context is unreadable: {e}"))?;
        ctx.params.extend(secrets.iter().map(|(k, v)| (k.clone(), v.clone())));
        for field in &self.fields {
            let (what, slot) = match field.at {
                FieldAt::Arg(k) => ("args".to_string(), spec.argv.get_mut(k as usize)),
                FieldAt::Env(k) => match spec.env.get_mut(k as usize) {
                    Some((name, value)) => (format!("env.{name}"), Some(value)),
                    None => ("env".to_string(), None),
                },
                FieldAt::Stdin => ("stdin".to_string(), spec.stdin.as_mut()),
            };
            let slot = slot.ok_or_else(|| format!("{what}: no such field in the spec"))?;
            *slot = template::render(&field.template, &ctx)
                .map_err(|e| params::redact(&format!("{what}: {e}"), secrets))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::template::UpstreamTask;

    /// A task with these fields (set directly: validation would want the params declared and
    /// `fetch` upstream).
    fn task(argv: Option<&[&str]>, env: &[(&str, &str)], stdin: Option<&str>) -> TaskDef {
        let text = "[jobs.j.tasks.t]\nrun = \"x\"\n";
        let mut workflow = crate::config::parse(std::path::Path::new("w.toml"), text).expect("valid");
        let mut def = workflow.jobs.remove(0).tasks.remove(0);
        if let Some(argv) = argv {
            def.command = CommandSpec::Argv(argv.iter().map(|a| a.to_string()).collect());
        }
        def.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        def.stdin = stdin.map(str::to_string);
        def
    }

    fn ctx(params: &[(&str, &str)]) -> TemplateContext {
        let upstream =
            UpstreamTask { outputs: [("url".to_string(), "https://x".to_string())].into(), ..Default::default() };
        TemplateContext {
            job: "j".into(),
            job_run_id: 7,
            params: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            tasks: [("fetch".to_string(), upstream)].into(),
            model: Some("m1".into()),
            item: Some((2, serde_json::json!({"os": "linux"}))),
        }
    }

    /// What `render_spec` gives: every field rendered with the secrets.
    fn rendered(def: &TaskDef, ctx: &TemplateContext) -> QueuedSpec {
        let render = |t: &String| template::render(t, ctx).expect("renders");
        let (shell, argv) = match &def.command {
            CommandSpec::Shell(text) => (Some(text.clone()), Vec::new()),
            CommandSpec::Argv(items) => (None, items.iter().map(render).collect()),
        };
        // Without the `env_file` values, held back before (`cluster::env_files`).
        let env: Vec<(String, String)> = def.env.iter().map(|(k, v)| (k.clone(), render(v))).collect();
        QueuedSpec {
            job: "j".into(),
            task: "t".into(),
            job_run: 7,
            task_run: 9,
            attempt: 1,
            shell,
            argv,
            env,
            stdin: def.stdin.as_ref().map(render),
            cwd: "/".into(),
            log_cap_bytes: 1,
            output_one_max_bytes: 1,
            output_all_max_bytes: 1,
            cost_source: 0,
            timeout_ms: Duration::from_secs(1).as_millis() as u64,
            heartbeat_timeout_ms: 0,
            model: None,
            secret_fields: None,
            env_files: def.env_files.clone(),
        }
    }

    #[test]
    fn the_fields_that_read_a_secret_go_unrendered_and_render_the_same_on_the_runner() {
        let def = task(
            Some(&[
                "curl",
                "-H",
                "Authorization: Bearer {{ params.token }}",
                "{{ tasks.fetch.outputs.url }}",
                "{{ item.os }}",
            ]),
            &[
                ("REGION", "{{ params.region }}"),
                ("KEY", "{{ params.key[:4] }}-{{ item_index }}"),
                ("MODEL", "{{ model }}"),
            ],
            Some("{% if params.token %}signed{% endif %} {{ job.run_id }}"),
        );
        let secrets = [("token", "s3cr3t-t0ken"), ("key", "k3y-value")];
        let all = ctx(&[("region", "eu"), secrets[0], secrets[1]]);
        let full = rendered(&def, &all);
        let mut sent = full.clone();
        let held = hold_back(&mut sent, &def, false, &all, &["token", "key"]).expect("held back").expect("some fields");
        assert_eq!(held.names, ["token", "key"]);
        let stored = serde_json::to_string(&(&sent, &held)).expect("json");
        for (_, value) in secrets {
            assert!(!stored.contains(value), "{value} is in what is sent: {stored}");
        }
        assert!(!stored.contains("k3y-"), "nor a part of one: {stored}");
        assert_eq!(sent.argv[..2], full.argv[..2], "fields without secrets go rendered");
        assert_eq!(sent.argv[2], MASK);
        assert_eq!(sent.env.iter().find(|(k, _)| k == "REGION").map(|(_, v)| v.as_str()), Some("eu"));

        let values: Values = secrets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut runner = sent.clone();
        held.render_into(&mut runner, &values).expect("renders");
        assert_eq!(runner, full, "the runner renders what the owner would have");
    }

    #[test]
    fn a_task_without_secret_fields_goes_as_it_is() {
        let def = task(None, &[("A", "{{ params.region }}")], None);
        let all = ctx(&[("region", "eu"), ("token", "t")]);
        let mut sent = rendered(&def, &all);
        let before = sent.clone();
        assert_eq!(hold_back(&mut sent, &def, false, &all, &["token"]), Ok(None));
        assert_eq!(sent, before);
    }

    #[test]
    fn a_runner_error_names_the_field_and_never_quotes_the_secret() {
        let def = task(None, &[("T", "{{ params.token }}{{ params.token | int + 1 }}")], None);
        let all = ctx(&[("token", "41")]);
        let mut sent = rendered(&def, &all);
        let held = hold_back(&mut sent, &def, false, &all, &["token"]).expect("held back").expect("some");
        let wrong: Values = [("token".to_string(), "not-a-number".to_string())].into();
        let err = held.render_into(&mut sent.clone(), &wrong).expect_err("fails");
        assert!(err.starts_with("env.T: ") && !err.contains("not-a-number"), "{err}");
        let none = Values::new();
        let err = held.render_into(&mut sent, &none).expect_err("no secret");
        assert!(err.contains("params.token") || err.contains("undefined"), "{err}");
    }

    #[test]
    fn a_spec_queued_by_an_older_node_still_reads() {
        let def = task(None, &[], None);
        let spec = rendered(&def, &ctx(&[]));
        let newest = crate::store::codec::encode(&spec).expect("encode");
        // Layout 2: no `env_files` (its empty list is the last byte); layout 1: nor
        // `secret_fields` (its `None`, the byte before).
        for (version, cut) in [(2, 1), (1, 2)] {
            let mut older = newest.clone();
            assert!(older.split_off(older.len() - cut).iter().all(|&b| b == 0));
            older[0] = version;
            assert_eq!(crate::store::codec::decode::<QueuedSpec>(&older).expect("decode"), spec, "layout {version}");
        }
    }
}
