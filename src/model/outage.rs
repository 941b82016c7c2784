//! One warning per outage, not one per retry. A loop that retries every few milliseconds while
//! the database is away (reading mail, claiming, shipping logs) said so on every try: hundreds
//! of identical lines in seconds, burying the one that says why. The first failure is said at
//! once; while it goes on, one line every [`Outage::SAY_EVERY_MS`] with how many tries failed
//! unsaid; and one line when it works again.

/// What one retrying loop has said of its current outage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outage {
    /// When the last line was said, while failing.
    said_at_ms: Option<u64>,
    /// Failures since that line.
    unsaid: u64,
    /// Failures in this outage.
    failures: u64,
}

impl Outage {
    pub const SAY_EVERY_MS: u64 = 10_000;

    /// A try failed at `now_ms` (any monotonic clock): `Some(n)` to say it now, `n` being the
    /// failures left unsaid since the previous line; `None` to keep quiet.
    pub fn failed(&mut self, now_ms: u64) -> Option<u64> {
        self.failures += 1;
        match self.said_at_ms {
            Some(at) if now_ms.saturating_sub(at) < Self::SAY_EVERY_MS => {
                self.unsaid += 1;
                None
            }
            _ => {
                self.said_at_ms = Some(now_ms);
                Some(std::mem::take(&mut self.unsaid))
            }
        }
    }

    /// [`Outage::failed`] as the tail of the warning to say now (`""` or how many tries failed
    /// unsaid), or `None` to keep quiet.
    pub fn failed_note(&mut self, now_ms: u64) -> Option<String> {
        self.failed(now_ms).map(unsaid_note)
    }

    /// A try worked: `Some(failures)` once, when it ends an outage.
    pub fn recovered(&mut self) -> Option<u64> {
        let failures = std::mem::take(&mut self.failures);
        *self = Outage::default();
        (failures > 0).then_some(failures)
    }
}

/// The tail of a repeated warning: `""`, or ` (12 more failed tries since the last line)`.
fn unsaid_note(unsaid: u64) -> String {
    match unsaid {
        0 => String::new(),
        n => format!(" ({n} more failed tries since the last line)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_said_once_then_every_ten_seconds_then_its_end() {
        let mut o = Outage::default();
        assert_eq!(o.recovered(), None, "nothing failed: nothing to say");
        assert_eq!(o.failed(1_000), Some(0), "the first failure is said");
        let quiet: Vec<Option<u64>> = (1..=39).map(|i| o.failed(1_000 + i * 250)).collect();
        assert!(quiet.iter().all(Option::is_none), "{quiet:?}");
        assert_eq!(o.failed(11_000), Some(39), "ten seconds on: one line, with what went unsaid");
        assert_eq!(o.failed(11_250), None);
        assert_eq!(o.recovered(), Some(42), "the end says how many tries failed");
        assert_eq!(o.recovered(), None, "once");
        assert_eq!(o.failed(11_500), Some(0), "a new outage is said at once");
    }

    #[test]
    fn the_note_is_empty_when_nothing_went_unsaid() {
        assert_eq!(unsaid_note(0), "");
        assert_eq!(unsaid_note(3), " (3 more failed tries since the last line)");
    }
}
