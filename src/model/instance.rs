//! How a task run is named where people read it: one task can have several task runs in one job
//! run (SPEC §2.2), told apart by iteration and fan-out item.

/// `review` for a task's first (or only) run, `review#2` for its second iteration, `fetch[3]` for
/// item 3 (0-based, as `item_index`), `fetch#2[3]` for both. Headless lines, `tasks`, `show` and
/// the TUI all name task runs with this.
pub fn label(task: &str, iteration: u32, item_index: Option<u32>) -> String {
    let mut label = task.to_string();
    if iteration > 1 {
        label.push_str(&format!("#{iteration}"));
    }
    if let Some(item) = item_index {
        label.push_str(&format!("[{item}]"));
    }
    label
}

/// `iteration` and `item_index` as JSON carries them (a task run's `--json`, a task event's
/// fields): absent, a task's first run and no item.
pub fn instance_in(fields: &serde_json::Map<String, serde_json::Value>) -> (u32, Option<u32>) {
    let small = |key| fields.get(key).and_then(serde_json::Value::as_u64).map(|n| u32::try_from(n).unwrap_or(u32::MAX));
    (small("iteration").unwrap_or(1), small("item_index"))
}

/// [`label`] of a task run or task event in JSON.
pub fn label_in(task: &str, fields: &serde_json::Map<String, serde_json::Value>) -> String {
    let (iteration, item_index) = instance_in(fields);
    label(task, iteration, item_index)
}

#[cfg(test)]
mod tests {
    use super::{label, label_in};

    #[test]
    fn a_task_run_is_labelled_by_its_iteration_and_item() {
        for (iteration, item, expected) in [
            (1, None, "review"),
            (0, None, "review"),
            (2, None, "review#2"),
            (12, None, "review#12"),
            (1, Some(0), "review[0]"),
            (1, Some(3), "review[3]"),
            (3, Some(7), "review#3[7]"),
        ] {
            assert_eq!(label("review", iteration, item), expected, "iteration {iteration}, item {item:?}");
        }
        let fields = |v: serde_json::Value| v.as_object().cloned().unwrap_or_default();
        assert_eq!(label_in("fetch", &fields(serde_json::json!({"iteration": 2, "item_index": 3}))), "fetch#2[3]");
        assert_eq!(
            label_in("fetch", &fields(serde_json::json!({"item_index": null}))),
            "fetch",
            "absent: the first run"
        );
    }
}
