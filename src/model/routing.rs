//! Routing by capability (issue #11): a node started with `--label gpu --label eu` runs only the
//! task runs whose `requires` it has every label of; a task run that requires nothing runs
//! anywhere. One rule for the Dispatcher (what this node starts), `status`, `show` and the TUI
//! (what no live node can run), and later the cluster's claim (`requires <@ labels`).

/// The most labels a node or a task may name: a label is a capability, not data.
pub const MAX_LABELS: usize = 32;
/// The longest label, in bytes (labels are ASCII).
pub const MAX_LABEL_LEN: usize = 64;

/// Why `label` is not a label: empty, too long, or not `[a-z0-9_.-]+` (lowercase, so `GPU` and
/// `gpu` cannot silently be two capabilities).
pub fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err("a label must not be empty".into());
    }
    if label.len() > MAX_LABEL_LEN {
        let head: String = label.chars().take(16).collect();
        return Err(format!("label `{}…` is longer than {MAX_LABEL_LEN} characters", head.escape_debug()));
    }
    if let Some(c) = label.chars().find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '_' | '.' | '-')) {
        return Err(format!(
            "label `{}` has {c:?}: a label is lowercase letters, digits, `_`, `.` and `-`",
            label.escape_debug()
        ));
    }
    Ok(())
}

/// Checks a whole list (a node's `--label`s or a task's `requires`): each label, and at most
/// [`MAX_LABELS`] of them. Repeats are allowed and mean nothing more.
pub fn check_labels<S: AsRef<str>>(labels: &[S]) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!("{} labels given; at most {MAX_LABELS} are allowed", labels.len()));
    }
    labels.iter().try_for_each(|l| check_label(l.as_ref()))
}

/// The labels of `requires` that `labels` lacks, in `requires`' order, each once.
pub fn missing<'a>(requires: &'a [String], labels: &[String]) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for r in requires {
        if !labels.contains(r) && !out.contains(&r.as_str()) {
            out.push(r);
        }
    }
    out
}

/// Whether a node with `labels` may run a task run that `requires` these.
pub fn can_run(requires: &[String], labels: &[String]) -> bool {
    requires.iter().all(|r| labels.contains(r))
}

/// Whether no node of `nodes` (each one's labels: the live nodes) can run a task run that
/// `requires` these. With no live node, nothing runs at all; that is not this task run's
/// particular problem, so it is not called unroutable.
pub fn unroutable(requires: &[String], nodes: &[&[String]]) -> bool {
    !nodes.is_empty() && !nodes.iter().any(|labels| can_run(requires, labels))
}

/// The line `status` prints for a task run no live node can run, and the reason `show` gives.
pub fn blocked_reason(requires: &[String], labels: &[String]) -> String {
    let flags: Vec<String> = missing(requires, labels).iter().map(|l| format!("--label {l}")).collect();
    format!("requires [{}]: no node has it — start one with {}", requires.join(", "), flags.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(labels: &[&str]) -> Vec<String> {
        labels.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn who_runs_what() {
        // (requires, node labels, can run)
        let table: &[(&[&str], &[&str], bool)] = &[
            (&[], &[], true),
            (&[], &["gpu"], true),
            (&["gpu"], &[], false),
            (&["gpu"], &["gpu"], true),
            (&["gpu"], &["eu", "gpu"], true),
            (&["gpu", "eu"], &["gpu"], false),
            (&["gpu", "eu"], &["eu", "gpu", "big"], true),
            (&["gpu", "gpu"], &["gpu"], true),
            (&["gpu"], &["gpu-2"], false),
        ];
        for (requires, labels, expected) in table {
            assert_eq!(can_run(&v(requires), &v(labels)), *expected, "requires {requires:?} on {labels:?}");
        }
    }

    #[test]
    fn unroutable_only_among_live_nodes() {
        let (gpu, eu) = (v(&["gpu"]), v(&["eu"]));
        assert!(!unroutable(&v(&["gpu"]), &[]), "no node at all is not one task's problem");
        assert!(unroutable(&v(&["gpu"]), &[&eu]));
        assert!(!unroutable(&v(&["gpu"]), &[&eu, &gpu]));
        assert!(unroutable(&v(&["gpu", "eu"]), &[&eu, &gpu]), "no one node has both");
        assert!(!unroutable(&[], &[&eu]));
    }

    #[test]
    fn reasons_name_what_is_missing() {
        assert_eq!(
            blocked_reason(&v(&["gpu", "eu"]), &v(&["eu"])),
            "requires [gpu, eu]: no node has it — start one with --label gpu"
        );
        assert_eq!(missing(&v(&["gpu", "big", "gpu"]), &[]), ["gpu", "big"]);
    }

    #[test]
    fn label_syntax() {
        for ok in ["gpu", "eu-west-1", "cuda_12.4", "a", &"x".repeat(MAX_LABEL_LEN)] {
            assert_eq!(check_label(ok), Ok(()), "{ok}");
        }
        for (bad, says) in [
            ("", "empty"),
            ("GPU", "has 'G'"),
            ("gpu eu", "has ' '"),
            ("gpu,eu", "has ','"),
            ("ümlaut", "has 'ü'"),
            ("a\u{1b}[31m", "has '\\u{1b}'"),
            (&"x".repeat(MAX_LABEL_LEN + 1), "longer than 64"),
        ] {
            let err = check_label(bad).expect_err(bad);
            assert!(err.contains(says), "{bad:?}: {err}");
        }
        assert!(check_labels(&vec!["a"; MAX_LABELS]).is_ok());
        assert!(check_labels(&vec!["a"; MAX_LABELS + 1]).expect_err("33 labels").contains("at most 32"));
    }

    proptest! {
        /// A node with more labels runs everything a node with fewer runs; requiring more
        /// never makes a task run runnable on more nodes.
        #[test]
        fn monotone(requires in proptest::collection::vec("[a-c]", 0..4),
                    labels in proptest::collection::vec("[a-d]", 0..4),
                    extra in "[a-d]") {
            let mut more = labels.clone();
            more.push(extra.clone());
            if can_run(&requires, &labels) {
                prop_assert!(can_run(&requires, &more));
            }
            let mut stricter = requires.clone();
            stricter.push(extra);
            if can_run(&stricter, &labels) {
                prop_assert!(can_run(&requires, &labels));
            }
            prop_assert_eq!(can_run(&requires, &labels), missing(&requires, &labels).is_empty());
        }
    }
}
