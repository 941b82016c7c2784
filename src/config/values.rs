//! Typed reading of TOML items with positions: every getter records a diagnostic and returns
//! `None` on a bad value, so the caller carries on and more problems get reported in one go.

use std::ops::Range;
use std::time::Duration;

use toml_edit::{Item, TableLike, Value};

use super::Diagnostic;
use super::types::RateLimit;
use crate::model::money::parse_usd_micros;

/// A 1-based line and character column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Pos {
    pub line: usize,
    pub col: usize,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, col: 1 };
}

/// A value together with where it was written.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Located<T> {
    pub value: T,
    pub at: Pos,
}

/// One `key = value` (or sub-table) of a table, with its positions resolved.
pub(super) struct Entry<'a> {
    pub name: &'a str,
    /// Where the key is written.
    pub key_at: Pos,
    /// Where the value is written (a table's header), falling back to the key.
    pub at: Pos,
    pub item: &'a Item,
}

/// Holds the source text for positions and collects diagnostics.
pub(super) struct Reader<'t> {
    text: &'t str,
    line_starts: Vec<usize>,
    pub diags: Vec<Diagnostic>,
}

impl<'t> Reader<'t> {
    pub fn new(text: &'t str) -> Self {
        let line_starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        Reader { text, line_starts, diags: Vec::new() }
    }

    pub fn pos(&self, offset: usize) -> Pos {
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        let start = self.line_starts[line - 1];
        let col = self.text.get(start..offset).map_or(offset - start, |s| s.chars().count()) + 1;
        Pos { line, col }
    }

    pub fn span_pos(&self, span: Option<Range<usize>>, fallback: Pos) -> Pos {
        span.map_or(fallback, |s| self.pos(s.start))
    }

    /// The exact source text of a value, e.g. `2.00` for a float (formatting would lose zeros).
    pub fn raw(&self, value: &Value) -> Option<&'t str> {
        value.span().and_then(|s| self.text.get(s)).map(str::trim)
    }

    pub fn error(&mut self, at: Pos, message: impl Into<String>) {
        self.diags.push(Diagnostic { line: at.line, col: at.col, message: message.into() });
    }

    /// The entries of a table (or inline table) in file order.
    pub fn entries<'a>(&self, table: &'a dyn TableLike, fallback: Pos) -> Vec<Entry<'a>> {
        table
            .iter()
            .map(|(name, item)| {
                let key_at = self.span_pos(table.key(name).and_then(|k| k.span()), fallback);
                Entry { name, key_at, at: self.span_pos(item.span(), key_at), item }
            })
            .collect()
    }

    pub fn unknown_key(&mut self, e: &Entry, context: &str, expected: &[&str]) {
        let hint = did_you_mean(e.name, expected).map(|s| format!("; did you mean `{s}`?")).unwrap_or_default();
        self.error(
            e.key_at,
            format!("unknown key `{}` in {context} (expected one of: {}){hint}", e.name, expected.join(", ")),
        );
    }

    pub fn table<'a>(&mut self, e: &Entry<'a>) -> Option<&'a dyn TableLike> {
        let t = e.item.as_table_like();
        if t.is_none() {
            self.error(e.at, format!("`{}` must be a table", e.name));
        }
        t
    }

    pub fn string(&mut self, e: &Entry) -> Option<String> {
        let s = e.item.as_str().map(str::to_string);
        if s.is_none() {
            self.error(e.at, format!("`{}` must be a string", e.name));
        }
        s
    }

    pub fn located_string(&mut self, e: &Entry) -> Option<Located<String>> {
        self.string(e).map(|value| Located { value, at: e.at })
    }

    pub fn bool(&mut self, e: &Entry) -> Option<bool> {
        let b = e.item.as_bool();
        if b.is_none() {
            self.error(e.at, format!("`{}` must be true or false", e.name));
        }
        b
    }

    /// An integer in `lo..=hi`; `what` completes "`key` must be an integer …".
    pub fn int_in(&mut self, e: &Entry, lo: i64, hi: i64, what: &str) -> Option<i64> {
        match e.item.as_integer() {
            Some(n) if (lo..=hi).contains(&n) => Some(n),
            _ => {
                self.error(e.at, format!("`{}` must be an integer {what}", e.name));
                None
            }
        }
    }

    /// A number (integers accepted) in `lo..=hi`.
    pub fn float_in(&mut self, e: &Entry, lo: f64, hi: f64, what: &str) -> Option<f64> {
        let n = e.item.as_float().or_else(|| e.item.as_integer().map(|i| i as f64));
        match n {
            Some(n) if n >= lo && n <= hi => Some(n),
            _ => {
                self.error(e.at, format!("`{}` must be a number {what}", e.name));
                None
            }
        }
    }

    /// A humantime string ("90s", "1h 30m"); `nonzero` rejects "0s".
    pub fn duration(&mut self, e: &Entry, nonzero: bool) -> Option<Duration> {
        let text = self.string(e)?;
        match humantime::parse_duration(text.trim()) {
            Ok(d) if nonzero && d.is_zero() => {
                self.error(e.at, format!("`{}` must be longer than zero", e.name));
                None
            }
            Ok(d) => Some(d),
            Err(err) => {
                self.error(e.at, format!("bad duration `{text}` for `{}`: {err}", e.name));
                None
            }
        }
    }

    /// Decimal dollars to micros, from the value's raw text so `2.00` never goes through f64.
    pub fn usd(&mut self, e: &Entry) -> Option<u64> {
        let raw = match e.item.as_value() {
            Some(Value::String(s)) => Some(s.value().clone()),
            Some(v @ (Value::Integer(_) | Value::Float(_))) => self.raw(v).map(str::to_string),
            _ => None,
        };
        let Some(raw) = raw else {
            self.error(e.at, format!("`{}` must be a decimal amount of dollars", e.name));
            return None;
        };
        match parse_usd_micros(&raw) {
            Ok(micros) => Some(micros),
            Err(err) => {
                self.error(e.at, format!("bad amount for `{}`: {err}", e.name));
                None
            }
        }
    }

    /// An array of strings, each with its position.
    pub fn string_array(&mut self, e: &Entry) -> Option<Vec<Located<String>>> {
        let Some(array) = e.item.as_array() else {
            self.error(e.at, format!("`{}` must be an array of strings", e.name));
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for v in array.iter() {
            let at = self.span_pos(v.span(), e.at);
            match v.as_str() {
                Some(s) => out.push(Located { value: s.to_string(), at }),
                None => {
                    self.error(at, format!("`{}` must be an array of strings", e.name));
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    /// An array of integers in `lo..=hi`.
    pub fn int_array(&mut self, e: &Entry, lo: i64, hi: i64, what: &str) -> Option<Vec<i64>> {
        let Some(array) = e.item.as_array() else {
            self.error(e.at, format!("`{}` must be an array of integers {what}", e.name));
            return None;
        };
        let mut out = Vec::new();
        for v in array.iter() {
            match v.as_integer() {
                Some(n) if (lo..=hi).contains(&n) => out.push(n),
                _ => {
                    let at = self.span_pos(v.span(), e.at);
                    self.error(at, format!("`{}` must be an array of integers {what}", e.name));
                    return None;
                }
            }
        }
        Some(out)
    }

    /// A table of strings (`env`): each value with its position.
    pub fn string_table(&mut self, e: &Entry) -> Vec<(String, Located<String>)> {
        let Some(table) = self.table(e) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in self.entries(table, e.at) {
            let label = format!("{}.{}", e.name, entry.name);
            match entry.item.as_str() {
                Some(s) => out.push((entry.name.to_string(), Located { value: s.to_string(), at: entry.at })),
                None => self.error(entry.at, format!("`{label}` must be a string")),
            }
        }
        out
    }

    /// Job, task and queue names end up in logs and command lines, so keep them plain.
    pub fn check_name(&mut self, kind: &str, name: &str, at: Pos) {
        let plain = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !plain {
            self.error(at, format!("{kind} name `{name}` may only contain letters, digits, `_` and `-`"));
        }
    }
}

/// Parses "N/unit" (`s|sec|second|m|min|minute|h|hour|d|day`) or "N/<humantime duration>".
pub(super) fn parse_rate_limit(text: &str) -> Result<RateLimit, String> {
    let (count, window) =
        text.split_once('/').ok_or_else(|| "expected `N/window`, e.g. `30/min` or `10/5s`".to_string())?;
    let count: u32 = count
        .trim()
        .parse()
        .ok()
        .filter(|&n| n >= 1)
        .ok_or_else(|| format!("`{}` is not a positive whole number", count.trim()))?;
    let window = window.trim();
    let unit_secs = match window {
        "s" | "sec" | "second" => Some(1),
        "m" | "min" | "minute" => Some(60),
        "h" | "hour" => Some(3600),
        "d" | "day" => Some(86_400),
        _ => None,
    };
    let window = match unit_secs {
        Some(secs) => Duration::from_secs(secs),
        None => humantime::parse_duration(window)
            .map_err(|_| format!("bad window `{window}`: use s, min, h, day or a duration like 5s or 2m"))?,
    };
    if window.is_zero() {
        return Err("the window must be longer than zero".to_string());
    }
    Ok(RateLimit { count, window })
}

/// The closest expected key, if it is plausibly a typo.
pub(super) fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4) && *d < c.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_characters() {
        let r = Reader::new("ab\nčx = 1\n");
        assert_eq!(r.pos(0), Pos { line: 1, col: 1 });
        assert_eq!(r.pos(3), Pos { line: 2, col: 1 });
        // `č` is two bytes but one column.
        assert_eq!(r.pos(5), Pos { line: 2, col: 2 });
    }

    #[test]
    fn rate_limits() {
        let rl = |s| parse_rate_limit(s);
        assert_eq!(rl("30/min"), Ok(RateLimit { count: 30, window: Duration::from_secs(60) }));
        assert_eq!(rl("10/5s"), Ok(RateLimit { count: 10, window: Duration::from_secs(5) }));
        assert_eq!(rl("1/day"), Ok(RateLimit { count: 1, window: Duration::from_secs(86_400) }));
        assert_eq!(rl("2/h").map(|r| r.window), Ok(Duration::from_secs(3600)));
        assert_eq!(rl("5 / 1m 30s").map(|r| r.window), Ok(Duration::from_secs(90)));
        for bad in ["30", "0/min", "-1/s", "x/s", "3/fortnight", "3/0s"] {
            assert!(rl(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn suggestions() {
        assert_eq!(did_you_mean("nees", &["needs", "env"]), Some("needs"));
        assert_eq!(did_you_mean("timeot", &["timeout", "queue_timeout"]), Some("timeout"));
        assert_eq!(did_you_mean("zzzzzz", &["needs", "env"]), None);
    }
}
