//! JSON text as gaffer prints it: numbers always in plain decimal notation.
//!
//! serde_json writes floats the shortest way, which for small or large ones is an exponent:
//! $0.000001 would print as `1e-6`. Money in JSON is a decimal number (SPEC §4.1) that people
//! read and scripts compare, so every JSON gaffer writes — events, `--json` output, API answers
//! — goes through these functions, whose formatter writes floats with Rust's `Display`: the
//! shortest digits that read back as the same number, and never an exponent. A float stays a
//! float on the wire: a whole number of dollars is written `2.0`, not `2`, so a reader that
//! tells integers from decimals (Python's `json`, the event shapes test) sees money as one type.

use std::io;

use serde::Serialize;
use serde_json::ser::{CompactFormatter, Formatter, PrettyFormatter};

/// One line of JSON (events, API answers).
pub fn text(value: &impl Serialize) -> String {
    write(value, Plain(CompactFormatter))
}

/// Indented JSON (`--json` output of commands).
pub fn pretty(value: &impl Serialize) -> String {
    write(value, Plain(PrettyFormatter::new()))
}

/// [`text`] of `value`, appended to `out` (`false`, with nothing appended, if it cannot be
/// serialized: a map with non-string keys, which gaffer does not build).
pub fn append_text(out: &mut Vec<u8>, value: &impl Serialize) -> bool {
    let len = out.len();
    let mut serializer = serde_json::Serializer::with_formatter(&mut *out, Plain(CompactFormatter));
    if value.serialize(&mut serializer).is_err() {
        out.truncate(len);
        return false;
    }
    true
}

fn write<F: Formatter>(value: &impl Serialize, formatter: F) -> String {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    // Serializing plain data into memory fails only for maps with non-string keys, which gaffer
    // does not build; an empty answer is still valid to the reader that way.
    if value.serialize(&mut serializer).is_err() {
        return "null".to_string();
    }
    String::from_utf8(out).unwrap_or_else(|_| "null".to_string())
}

/// A formatter that writes floats in plain notation and leaves the layout to `F`.
struct Plain<F>(F);

impl<F: Formatter> Formatter for Plain<F> {
    fn write_f64<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        write_decimal(writer, value.to_string())
    }

    fn write_f32<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f32) -> io::Result<()> {
        write_decimal(writer, value.to_string())
    }

    fn begin_array<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.begin_array(writer)
    }

    fn end_array<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.end_array(writer)
    }

    fn begin_array_value<W: ?Sized + io::Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        self.0.begin_array_value(writer, first)
    }

    fn end_array_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.end_array_value(writer)
    }

    fn begin_object<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.begin_object(writer)
    }

    fn end_object<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.end_object(writer)
    }

    fn begin_object_key<W: ?Sized + io::Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        self.0.begin_object_key(writer, first)
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.begin_object_value(writer)
    }

    fn end_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.end_object_value(writer)
    }
}

/// `Display` of a float, with `.0` added to a whole number (`0` → `0.0`) so it reads back as a
/// float. `Display` never writes an exponent, and JSON holds no NaN or infinity.
fn write_decimal<W: ?Sized + io::Write>(writer: &mut W, digits: String) -> io::Result<()> {
    let point = if digits.contains('.') { "" } else { ".0" };
    write!(writer, "{digits}{point}")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::money::usd_json;

    #[test]
    fn money_never_prints_with_an_exponent() {
        let value = json!({"small": usd_json(1), "cents": usd_json(30_000), "n": 3});
        assert_eq!(text(&value), r#"{"small":0.000001,"cents":0.03,"n":3}"#);
        assert!(!text(&usd_json(u64::MAX)).contains(['e', 'E']), "{}", text(&usd_json(u64::MAX)));
        assert_eq!(serde_json::to_string(&usd_json(1)).ok().as_deref(), Some("1e-6"), "what serde_json alone does");
        let pretty = pretty(&json!([usd_json(5)]));
        assert_eq!(pretty, "[\n  0.000005\n]");
        let back: serde_json::Value = serde_json::from_str(&text(&value)).expect("valid JSON");
        assert_eq!(back["small"].as_f64(), Some(0.000001));
    }

    /// Regression: `task.succeeded`'s `cost_usd` was `0` (an integer) for a free task and
    /// `0.0123` for a paid one; whole dollars were integers too (SPEC §4.1: a decimal number).
    #[test]
    fn whole_dollars_stay_decimal_numbers() {
        let value = json!({"free": usd_json(0), "two": usd_json(2_000_000), "n": 3});
        assert_eq!(text(&value), r#"{"free":0.0,"two":2.0,"n":3}"#);
        let back: serde_json::Value = serde_json::from_str(&text(&value)).expect("valid JSON");
        assert!(back["free"].is_f64() && back["two"].is_f64() && back["n"].is_u64(), "{back}");
        assert_eq!(text(&json!(1e300)).parse::<f64>().ok(), Some(1e300));
    }
}
