//! `params = { topic = "rust", token = { secret = true, env = "API_TOKEN" } }`: each param is a
//! plain default value, or a table with an optional `default`, `secret` and `env`.

use std::collections::BTreeMap;

use toml_edit::Value;

use super::types::ParamDef;
use super::values::{Entry, Reader};

pub(super) const PARAM_KEYS: &[&str] = &["default", "secret", "env"];

/// The `params` table of a job.
pub(super) fn read_params(r: &mut Reader, e: &Entry) -> BTreeMap<String, ParamDef> {
    let Some(table) = r.table(e) else {
        return BTreeMap::new();
    };
    let mut params = BTreeMap::new();
    for entry in r.entries(table, e.at) {
        let def = if entry.item.is_table_like() {
            read_param_table(r, &entry)
        } else {
            scalar_text(r, &entry).map(|text| ParamDef::plain(&text))
        };
        if let Some(def) = def {
            params.insert(entry.name.to_string(), def);
        }
    }
    params
}

/// `{ default = …, secret = true, env = "VAR" }`.
fn read_param_table(r: &mut Reader, entry: &Entry) -> Option<ParamDef> {
    let table = r.table(entry)?;
    let mut def = ParamDef::default();
    let mut default_at = None;
    for e in r.entries(table, entry.at) {
        match e.name {
            "default" => {
                default_at = Some(e.at);
                def.default = scalar_text(r, &e);
            }
            "secret" => def.secret = r.bool(&e).unwrap_or(false),
            "env" => def.env = read_env_name(r, &e),
            _ => r.unknown_key(&e, &format!("param `{}`", entry.name), PARAM_KEYS),
        }
    }
    if let (true, Some(at)) = (def.secret, default_at) {
        let message = format!(
            "secret param `{}` cannot have a `default`: the workflow file is kept in the state dir; \
             give it with --param {0}=… or name an environment variable with `env`",
            entry.name
        );
        r.error(at, message);
    }
    Some(def)
}

/// A param value as text: strings, integers, floats (as written) and booleans.
fn scalar_text(r: &mut Reader, e: &Entry) -> Option<String> {
    let text = match e.item.as_value() {
        Some(Value::String(s)) => Some(s.value().clone()),
        Some(Value::Boolean(b)) => Some(b.value().to_string()),
        Some(v @ (Value::Integer(_) | Value::Float(_))) => r.raw(v).map(str::to_string),
        _ => None,
    };
    if text.is_none() {
        r.error(
            e.at,
            format!("`{}` must be a string, number or boolean (or a table: {})", e.name, PARAM_KEYS.join(", ")),
        );
    }
    text
}

/// An environment variable name: letters, digits and `_`, not starting with a digit.
fn read_env_name(r: &mut Reader, e: &Entry) -> Option<String> {
    let name = r.string(e)?;
    let plain = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !plain {
        r.error(e.at, format!("`env` must name an environment variable (letters, digits, `_`), not `{name}`"));
        return None;
    }
    Some(name)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::ParamDef;

    fn parse(text: &str) -> Result<crate::config::Workflow, Vec<String>> {
        crate::config::parse(Path::new("wf.toml"), text)
            .map_err(|d| d.items.iter().map(|i| format!("{}:{}: {}", i.line, i.col, i.message)).collect())
    }

    #[test]
    fn plain_values_and_tables_sit_side_by_side() {
        let wf = parse(
            "[jobs.j]\nparams = { topic = \"rust\", n = 3, token = { secret = true, env = \"API_TOKEN\" }, \
             day = { default = \"mon\" }, who = {} }\n[jobs.j.tasks.t]\nrun = \"x\"\n",
        )
        .expect("valid");
        let params = &wf.jobs[0].params;
        assert_eq!(params["topic"], ParamDef::plain("rust"));
        assert_eq!(params["n"], ParamDef::plain("3"));
        assert_eq!(params["token"], ParamDef { default: None, secret: true, env: Some("API_TOKEN".into()) });
        assert_eq!(params["day"], ParamDef::plain("mon"));
        assert_eq!(params["who"], ParamDef::default(), "no default: a value must be given");
    }

    #[test]
    fn a_secret_cannot_have_a_default_and_bad_tables_are_named() {
        let errors = parse(
            "[jobs.j]\nparams = { token = { secret = true, default = \"x\" }, a = { env = \"1X\" }, b = { secrte = true }, c = [1] }\n\
             [jobs.j.tasks.t]\nrun = \"x\"\n",
        )
        .expect_err("invalid");
        assert_eq!(
            errors,
            [
                "2:47: secret param `token` cannot have a `default`: the workflow file is kept in the state dir; give it with --param token=… or name an environment variable with `env`",
                "2:66: `env` must name an environment variable (letters, digits, `_`), not `1X`",
                "2:80: unknown key `secrte` in param `b` (expected one of: default, secret, env); did you mean `secret`?",
                "2:101: `c` must be a string, number or boolean (or a table: default, secret, env)",
            ]
        );
    }
}
