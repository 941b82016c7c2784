//! Job params: where each value comes from, what is stored, and what templates see.
//!
//! A secret param's value lives only in the memory of the gaffer process that was given it:
//! the stored run (and so every view of it: `show`, `jobs`, the journal, the TUI) holds `***`.
//! A run that must go on in another process (resumed after a restart, retried later) needs the
//! value again, from that process's `--param` or from the environment variable the param names.

use std::collections::BTreeMap;

use crate::config::template::TemplateContext;
use crate::config::{JobDef, ParamDef};

/// What a secret's value is replaced with wherever it would be stored or shown.
pub const MASK: &str = "***";

pub type Values = BTreeMap<String, String>;

/// Where values come from besides the request itself.
pub struct Sources<'a> {
    /// Secret values given to this gaffer process (`run`/`serve --param`): they serve resumed
    /// runs, retries, scheduled fires and submits that do not carry their own.
    pub instance: &'a Values,
    /// The process environment, for params that name a variable (`env = "VAR"`).
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

/// A new run's params: what is stored (secrets masked) and the secrets themselves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    pub stored: Values,
    pub secrets: Values,
}

/// The params of a new run of `job`: `given` over the environment and the declared defaults.
/// A param the job does not declare, or one left without a value, is an error that says how to
/// give it.
pub fn resolve(job: &JobDef, given: &Values, sources: &Sources) -> Result<Resolved, String> {
    if let Some(unknown) = given.keys().find(|k| !job.params.contains_key(*k)) {
        let declared: Vec<&str> = job.params.keys().map(String::as_str).collect();
        let declared = if declared.is_empty() {
            "it declares no params".into()
        } else {
            format!("declared: {}", declared.join(", "))
        };
        return Err(format!("unknown param `{unknown}` for job `{}` ({declared})", job.name));
    }
    let mut resolved = Resolved::default();
    let mut missing = Vec::new();
    for (name, def) in &job.params {
        let value = given.get(name).cloned().or_else(|| fallback(name, def, sources)).or_else(|| def.default.clone());
        match (value, def.secret) {
            (Some(value), true) => {
                resolved.stored.insert(name.clone(), MASK.to_string());
                resolved.secrets.insert(name.clone(), value);
            }
            (Some(value), false) => {
                resolved.stored.insert(name.clone(), value);
            }
            (None, _) => {
                let kind = if def.secret { "secret param" } else { "param" };
                missing.push(format!("{kind} {}", how_to_give(name, def)));
            }
        }
    }
    if missing.is_empty() { Ok(resolved) } else { Err(format!("job `{}` needs {}", job.name, missing.join("; "))) }
}

/// A value not given with the request: the process's own secret, else the environment.
fn fallback(name: &str, def: &ParamDef, sources: &Sources) -> Option<String> {
    let instance = def.secret.then(|| sources.instance.get(name).cloned()).flatten();
    instance.or_else(|| def.env.as_deref().and_then(|var| (sources.env)(var)))
}

/// "`token` (pass --param token=…, or set $API_TOKEN)".
fn how_to_give(name: &str, def: &ParamDef) -> String {
    let env = def.env.as_deref().map(|var| format!(", or set ${var}")).unwrap_or_default();
    format!("`{name}` (pass --param {name}=…{env})")
}

/// The secrets a stored run of `job` needs again (they were never stored): what this process
/// holds for the run, else its `--param`, else the environment. The error names every missing
/// one and how to give it.
pub fn secrets_again(job: &JobDef, held: Option<&Values>, sources: &Sources) -> Result<Values, String> {
    secrets_named(job, |_| true, held, sources)
}

/// [`secrets_again`] for the secret params of `job` that `wanted` names only: what a cluster
/// node needs to render the fields of a task that read them.
pub fn secrets_named(
    job: &JobDef,
    wanted: impl Fn(&str) -> bool,
    held: Option<&Values>,
    sources: &Sources,
) -> Result<Values, String> {
    let mut secrets = Values::new();
    let mut missing = Vec::new();
    for (name, def) in job.params.iter().filter(|(name, d)| d.secret && wanted(name)) {
        match held.and_then(|h| h.get(name).cloned()).or_else(|| fallback(name, def, sources)) {
            Some(value) => {
                secrets.insert(name.clone(), value);
            }
            None => missing.push(how_to_give(name, def)),
        }
    }
    if missing.is_empty() {
        Ok(secrets)
    } else {
        Err(format!("secrets are never stored, so it needs them again: {}", missing.join("; ")))
    }
}

/// The secret params (`secret_names`, each with its value in `ctx.params`) whose value
/// `template`'s rendering depends on: those without which it renders otherwise, or not at all.
/// Found by rendering, not by reading the template (a slice `params.key[:4]` or
/// `params.get('key')` hides the name from a reading), so a template that only looks like it
/// reads one (`{% if false %}{{ params.key }}{% endif %}`) reads none; its text without the
/// secret is then the same as with it.
pub fn secrets_read<'a>(template: &str, ctx: &TemplateContext, secret_names: &[&'a str]) -> Vec<&'a str> {
    if !crate::config::template::is_templated(template) || !template.contains("params") {
        return Vec::new();
    }
    let with = crate::config::template::render(template, ctx);
    let depends_on = |name: &str| {
        let mut without = ctx.clone();
        without.params.remove(name);
        match (&with, crate::config::template::render(template, &without)) {
            (Ok(with), Ok(without)) => *with != without,
            _ => true,
        }
    };
    secret_names.iter().copied().filter(|name| depends_on(name)).collect()
}

/// A secret param given with one run's request (`submit --param`) that this cluster node would
/// not find itself (in its `--param` or the environment, or not the same value): refused,
/// since no other node could ever get it (it is never stored), so the tasks it runs elsewhere
/// would see another value or none.
pub fn given_secret_not_held(job: &JobDef, given: &Values, sources: &Sources) -> Option<String> {
    let (name, def) = job
        .params
        .iter()
        .filter(|(name, def)| def.secret && given.contains_key(*name))
        .find(|(name, def)| fallback(name, def, sources).as_ref() != given.get(*name))?;
    Some(format!(
        "secret param `{name}` of job `{}` cannot be given with one run in a cluster: it is never stored, \
         so the nodes that run its tasks take it from their own `serve --param {name}=…`{}; give it to every node",
        job.name,
        def.env.as_deref().map(|var| format!(" or ${var}")).unwrap_or_default()
    ))
}

/// The secret params of `jobs` a cluster node would find no value for (`run`/`serve --param`,
/// the param's environment variable): said when it starts, since a task of theirs that reads
/// one fails on this node (its owner never stores the value to send).
pub fn secrets_not_held<'a>(jobs: impl IntoIterator<Item = &'a JobDef>, sources: &Sources) -> Vec<String> {
    let mut missing = Vec::new();
    for job in jobs {
        for (name, def) in job.params.iter().filter(|(_, d)| d.secret) {
            if fallback(name, def, sources).is_none() {
                missing.push(format!("secret param {} of job `{}`", how_to_give(name, def), job.name));
            }
        }
    }
    missing
}

/// What templates see: the stored values, each secret's mask replaced by its value. A secret
/// with no value is left out, so a template naming it fails instead of rendering `***`.
pub fn for_templates(job: &JobDef, stored: &Values, secrets: &Values) -> Values {
    let mut params: Values = stored
        .iter()
        .filter(|(name, _)| !job.params.get(*name).is_some_and(|d| d.secret))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    params.extend(secrets.iter().map(|(k, v)| (k.clone(), v.clone())));
    params
}

/// `text` with every secret value in it replaced by `***`: for error text that may quote a
/// rendered value.
pub fn redact(text: &str, secrets: &Values) -> String {
    let mut values: Vec<&String> = secrets.values().filter(|v| !v.is_empty()).collect();
    // The longest first, so a secret that contains another is hidden whole.
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    values.into_iter().fold(text.to_string(), |text, secret| text.replace(secret.as_str(), MASK))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(params: &[(&str, ParamDef)]) -> JobDef {
        let text = "[jobs.deploy.tasks.t]\nrun = \"x\"\n";
        let mut job = crate::config::parse(std::path::Path::new("w.toml"), text).expect("valid").jobs.remove(0);
        job.params = params.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        job
    }

    fn secret(env: Option<&str>) -> ParamDef {
        ParamDef { default: None, secret: true, env: env.map(String::from) }
    }

    fn values(pairs: &[(&str, &str)]) -> Values {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn env_with(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |var| pairs.iter().find(|(k, _)| *k == var).map(|(_, v)| v.to_string())
    }

    #[test]
    fn where_each_value_comes_from() {
        let j = job(&[
            ("topic", ParamDef::plain("rust")),
            ("region", ParamDef { default: Some("eu".into()), secret: false, env: Some("REGION".into()) }),
            ("token", secret(Some("TOKEN"))),
            ("key", secret(None)),
        ]);
        let env = env_with(&[("TOKEN", "from-env"), ("REGION", "us")]);
        let instance = values(&[("key", "from-instance"), ("topic", "ignored: not a secret")]);
        let sources = Sources { instance: &instance, env: &env };
        type Pairs = &'static [(&'static str, &'static str)];
        // (given, expected stored, expected secrets)
        let table: &[(Pairs, Pairs, Pairs)] = &[
            (
                &[],
                &[("topic", "rust"), ("region", "us"), ("token", MASK), ("key", MASK)],
                &[("token", "from-env"), ("key", "from-instance")],
            ),
            (
                &[("token", "given"), ("key", "k"), ("topic", "go"), ("region", "ap")],
                &[("topic", "go"), ("region", "ap"), ("token", MASK), ("key", MASK)],
                &[("token", "given"), ("key", "k")],
            ),
        ];
        for (given, stored, secrets) in table {
            let r = resolve(&j, &values(given), &sources).expect("resolves");
            assert_eq!(r.stored, values(stored), "given {given:?}");
            assert_eq!(r.secrets, values(secrets), "given {given:?}");
        }
    }

    #[test]
    fn a_missing_or_unknown_param_is_refused_with_how_to_give_it() {
        let j = job(&[("token", secret(Some("TOKEN"))), ("who", ParamDef::default()), ("n", ParamDef::plain("1"))]);
        let none = Values::new();
        let sources = Sources { instance: &none, env: &|_| None };
        assert_eq!(
            resolve(&j, &none, &sources),
            Err("job `deploy` needs secret param `token` (pass --param token=…, or set $TOKEN); \
                 param `who` (pass --param who=…)"
                .into())
        );
        assert_eq!(
            resolve(&j, &values(&[("nope", "1")]), &sources),
            Err("unknown param `nope` for job `deploy` (declared: n, token, who)".into())
        );
    }

    #[test]
    fn secrets_again_come_from_memory_then_the_process_then_the_environment() {
        let j = job(&[("a", secret(None)), ("b", secret(Some("B"))), ("plain", ParamDef::plain("x"))]);
        let env = env_with(&[("B", "b-env")]);
        let instance = values(&[("a", "a-instance")]);
        let sources = Sources { instance: &instance, env: &env };
        assert_eq!(secrets_again(&j, None, &sources), Ok(values(&[("a", "a-instance"), ("b", "b-env")])));
        let held = values(&[("a", "a-held"), ("b", "b-held")]);
        assert_eq!(secrets_again(&j, Some(&held), &sources), Ok(held.clone()));
        let none = Values::new();
        let bare = Sources { instance: &none, env: &|_| None };
        assert_eq!(
            secrets_again(&j, None, &bare),
            Err("secrets are never stored, so it needs them again: `a` (pass --param a=…); \
                 `b` (pass --param b=…, or set $B)"
                .into())
        );
    }

    #[test]
    fn templates_see_values_never_masks() {
        let j = job(&[("a", secret(None)), ("b", secret(None)), ("plain", ParamDef::plain("x"))]);
        let stored = values(&[("a", MASK), ("b", MASK), ("plain", "x")]);
        let seen = for_templates(&j, &stored, &values(&[("a", "va")]));
        assert_eq!(seen, values(&[("a", "va"), ("plain", "x")]), "b has no value: absent, not `***`");
    }

    #[test]
    fn redact_hides_every_secret_whole() {
        let secrets = values(&[("a", "abc"), ("b", "abcdef"), ("empty", "")]);
        assert_eq!(redact("x abcdef y abc z", &secrets), "x *** y *** z");
        assert_eq!(redact("nothing here", &secrets), "nothing here");
    }

    #[test]
    fn a_template_reads_the_secrets_its_rendering_depends_on() {
        let secrets = ["token", "key"];
        let params = values(&[("token", "t0ken"), ("key", "k3y-long"), ("region", "eu")]);
        let ctx = TemplateContext { params, ..TemplateContext::default() };
        let table: &[(&str, &[&str])] = &[
            ("plain text {{", &[]),
            ("no template", &[]),
            ("{{ params.region }}", &[]),
            ("Bearer {{ params.token }}", &["token"]),
            ("{{ params.token | upper }}-{{ params.key[:4] }}", &["token", "key"]),
            ("{{ params.key[:4] }}", &["key"]),
            ("{{ params.region ~ (params.key | length) }}", &["key"]),
            ("{% if params.key %}k{% endif %}", &["key"]),
            ("{{ params['token'] }}", &["token"]),
            ("{% for k in params %}{{ k }}{% endfor %}", &["token", "key"]),
            ("{{ params | length }}", &["token", "key"]),
            ("{% if false %}{{ params.key }}{% endif %}", &[]),
            // One that cannot render reads them all (its render fails before anything is sent).
            ("{{ params.tokens }}", &["token", "key"]),
        ];
        for (template, expected) in table {
            assert_eq!(secrets_read(template, &ctx, &secrets), *expected, "{template}");
        }
        assert!(secrets_read("{{ params.token }}", &ctx, &[]).is_empty());
    }

    #[test]
    fn a_secret_given_with_one_run_must_be_what_the_node_holds_itself() {
        let j = job(&[("token", secret(Some("TOKEN"))), ("plain", ParamDef::plain("x"))]);
        let env = env_with(&[("TOKEN", "from-env")]);
        let none = Values::new();
        let from_env = Sources { instance: &none, env: &env };
        assert_eq!(given_secret_not_held(&j, &values(&[("plain", "y")]), &from_env), None);
        assert_eq!(given_secret_not_held(&j, &values(&[("token", "from-env")]), &from_env), None);
        let refused = given_secret_not_held(&j, &values(&[("token", "other")]), &from_env).expect("refused");
        assert!(refused.contains("`token`") && refused.contains("$TOKEN") && !refused.contains("other"), "{refused}");
        let bare = Sources { instance: &none, env: &|_| None };
        assert!(given_secret_not_held(&j, &values(&[("token", "v")]), &bare).is_some());
        let instance = values(&[("token", "v")]);
        let held = Sources { instance: &instance, env: &|_| None };
        assert_eq!(given_secret_not_held(&j, &values(&[("token", "v")]), &held), None);
    }

    #[test]
    fn a_node_says_which_secrets_it_holds_no_value_for() {
        let j = job(&[("token", secret(Some("TOKEN"))), ("key", secret(None)), ("plain", ParamDef::plain("x"))]);
        let none = Values::new();
        let bare = Sources { instance: &none, env: &|_| None };
        assert_eq!(
            secrets_not_held([&j], &bare),
            [
                "secret param `key` (pass --param key=…) of job `deploy`",
                "secret param `token` (pass --param token=…, or set $TOKEN) of job `deploy`"
            ]
        );
        let env = env_with(&[("TOKEN", "t")]);
        let instance = values(&[("key", "k")]);
        assert!(secrets_not_held([&j], &Sources { instance: &instance, env: &env }).is_empty());
    }
}
