//! `gaffer pricing [FILE]`: the token prices in force; `gaffer pricing import FILE`: refresh
//! them from LiteLLM's `model_prices_and_context_window.json` into `STATE_DIR/pricing.toml`.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;

use super::CliError;
use crate::config::{self, Price, pricing};
use crate::model::cost::Pricing;
use crate::model::money::{format_usd, usd_json};
use crate::state_dir::{Access, StateDir};

pub fn show(state_dir: &Path, file: Option<&Path>, as_json: bool) -> Result<(), CliError> {
    let builtin = pricing::builtin();
    let imported = pricing::imported(state_dir).map_err(CliError::Failed)?;
    let workflow = match file {
        Some(file) => config::load(file).map_err(|e| CliError::Usage(e.to_string()))?.pricing,
        None => BTreeMap::new(),
    };
    let in_force = Pricing::layered(&[&builtin, &imported, &workflow]);
    let source = |model: &str| {
        if workflow.contains_key(model) {
            "workflow"
        } else if imported.contains_key(model) {
            "imported"
        } else {
            "built-in"
        }
    };
    if as_json {
        let rows: Vec<_> = in_force
            .entries()
            .iter()
            .map(|(model, p)| {
                json!({"model": model, "input_per_mtok": usd_json(p.input_usd_micros_per_mtok),
                       "output_per_mtok": usd_json(p.output_usd_micros_per_mtok),
                       "cache_read_per_mtok": usd_json(p.cache_read()), "cache_write_per_mtok": usd_json(p.cache_write()),
                       "source": source(model)})
            })
            .collect();
        outln!("{}", crate::json::pretty(&rows));
        return Ok(());
    }
    outln!("US dollars per million tokens; a cache price not given is the input price");
    outln!("{:<40} {:>9} {:>9} {:>11} {:>12}  SOURCE", "MODEL", "INPUT", "OUTPUT", "CACHE READ", "CACHE WRITE");
    for (model, p) in in_force.entries() {
        outln!(
            "{:<40} {:>9} {:>9} {:>11} {:>12}  {}",
            crate::sanitize::sanitize(model),
            format_usd(p.input_usd_micros_per_mtok),
            format_usd(p.output_usd_micros_per_mtok),
            format_usd(p.cache_read()),
            format_usd(p.cache_write()),
            source(model)
        );
    }
    if imported.is_empty() {
        outln!("(no imported table: `gaffer pricing import FILE` refreshes the prices from LiteLLM's list)");
    }
    Ok(())
}

pub fn import(state_dir: &Path, file: &Path) -> Result<(), CliError> {
    let failed = |e: std::io::Error| CliError::Failed(format!("{}: {e}", file.display()));
    let size = std::fs::metadata(file).map_err(failed)?.len();
    if size > pricing::MAX_IMPORT_BYTES {
        return Err(CliError::Failed(format!(
            "{}: {size} bytes is more than a price list needs (at most {})",
            file.display(),
            pricing::MAX_IMPORT_BYTES
        )));
    }
    let text = std::fs::read_to_string(file).map_err(failed)?;
    let imported = pricing::from_litellm(&text).map_err(|e| CliError::Failed(format!("{}: {e}", file.display())))?;
    let header = format!(
        "Token prices imported by `gaffer pricing import` from {} ({} models).\n\
         They override the built-in prices; a workflow file's [pricing.\"model\"] tables override them.\n\
         Delete this file to go back to the built-in prices.",
        file.display(),
        imported.prices.len()
    );
    write_table(state_dir, &imported.prices, &header)?;
    outln!(
        "imported {} model prices into {} ({} entries without per-token prices skipped); \
         they apply from the next `gaffer run` or `gaffer serve`",
        imported.prices.len(),
        pricing::imported_path(state_dir).display(),
        imported.skipped
    );
    Ok(())
}

/// Writes the table next to the state (a private dir, created if needed), atomically: a crash
/// leaves the old table or the new one, never half of one.
fn write_table(state_dir: &Path, prices: &BTreeMap<String, Price>, header: &str) -> Result<(), CliError> {
    use std::io::Write;
    let dir = StateDir::create_checked(state_dir).map_err(|e| CliError::Store(e.into()))?;
    let temp = format!("{}.tmp", pricing::IMPORTED_FILE);
    let failed = |e: std::io::Error| CliError::Failed(e.to_string());
    let mut file = dir.open_file(&temp, Access::Replace).map_err(failed)?;
    file.write_all(pricing::to_toml(prices, header).as_bytes()).and_then(|()| file.sync_all()).map_err(failed)?;
    dir.rename(&temp, pricing::IMPORTED_FILE).map_err(failed)
}
