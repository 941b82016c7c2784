//! What an attempt may report as outputs: each one within `output_max_bytes`, all of them
//! together within `outputs_max_bytes` (SPEC §3 `output`, README "Limits"). An output past a cap
//! is dropped whole, with a warning, never cut: a downstream template then fails loudly on a
//! missing output instead of working on half a value.

use std::collections::BTreeMap;

use crate::config::OutputLimits;

/// The outputs an attempt reported so far, by size.
#[derive(Debug)]
pub struct OutputBudget {
    limits: OutputLimits,
    sizes: BTreeMap<String, usize>,
    total: usize,
}

impl OutputBudget {
    pub fn new(limits: OutputLimits) -> Self {
        OutputBudget { limits, sizes: BTreeMap::new(), total: 0 }
    }

    /// Takes output `key` of `value_len` bytes into the budget, or says why it is dropped. A key
    /// set again replaces its earlier value, in the budget as in the outputs.
    pub fn admit(&mut self, key: &str, value_len: usize) -> Result<(), String> {
        let size = key.len() + value_len;
        let one = self.limits.one_max_bytes;
        if size > one {
            return Err(format!(
                "output `{key}` ({size} bytes) is larger than output_max_bytes ({one}); dropped \
                 (write big results to a file, or raise [settings] output_max_bytes)"
            ));
        }
        let before = self.sizes.get(key).copied().unwrap_or(0);
        let total = self.total - before + size;
        let all = self.limits.all_max_bytes;
        if total > all {
            return Err(format!(
                "output `{key}` dropped: the attempt's outputs would take {total} bytes, more than \
                 outputs_max_bytes ({all}) (raise [settings] outputs_max_bytes)"
            ));
        }
        self.sizes.insert(key.to_string(), size);
        self.total = total;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(one: usize, all: usize) -> OutputBudget {
        OutputBudget::new(OutputLimits { one_max_bytes: one, all_max_bytes: all })
    }

    #[test]
    fn one_output_over_its_cap_is_dropped_whole() {
        let mut b = budget(10, 100);
        assert_eq!(b.admit("k", 9), Ok(()));
        let err = b.admit("k", 10).expect_err("11 bytes with its key");
        assert!(err.contains("output `k` (11 bytes) is larger than output_max_bytes (10)"), "{err}");
    }

    #[test]
    fn all_outputs_together_stay_under_their_cap() {
        let mut b = budget(10, 25);
        assert_eq!(b.admit("a", 9), Ok(()));
        assert_eq!(b.admit("b", 9), Ok(()));
        let err = b.admit("c", 9).expect_err("30 > 25");
        assert!(err.contains("would take 30 bytes, more than outputs_max_bytes (25)"), "{err}");
        // Setting a key again replaces it: the total does not grow.
        for _ in 0..100 {
            assert_eq!(b.admit("a", 9), Ok(()));
        }
        assert_eq!(b.admit("a", 0), Ok(()));
        assert_eq!(b.admit("c", 9), Ok(()), "room again after `a` shrank");
    }
}
