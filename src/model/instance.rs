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

#[cfg(test)]
mod tests {
    use super::label;

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
    }
}
