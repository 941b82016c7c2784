//! The fd-3 control protocol: one message per line, parsed strictly. A malformed line never
//! fails the attempt; it becomes a warning that the caller logs and reports.

use super::types::{AttemptEvent, CostReport};
use crate::model::cost::MAX_TOKENS;
use crate::sanitize::sanitize;

/// Largest accepted `output` value; larger ones are dropped with a warning rather than
/// truncated, so a downstream task never sees a silently cut value.
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;
/// Longest fd-3 line read as one message: a full-size single-line `output` plus its key.
pub const MAX_CONTROL_LINE: usize = MAX_OUTPUT_BYTES + 4096;
/// Unknown lines are quoted in warnings, but never at length.
const QUOTE_CHARS: usize = 200;

/// An open `output key<<DELIM` block collecting its lines.
#[derive(Debug)]
struct Block {
    key: String,
    delimiter: String,
    value: String,
    lines: usize,
    too_big: bool,
}

/// Stateful because `output key<<EOF` blocks span lines.
#[derive(Debug, Default)]
pub struct Parser {
    block: Option<Block>,
}

impl Parser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses one line (with or without its trailing newline). `None`: nothing to report yet.
    pub fn line(&mut self, raw: &[u8]) -> Option<AttemptEvent> {
        let raw = strip_newline(raw);
        if self.block.is_some() {
            return self.block_line(raw);
        }
        let Ok(text) = std::str::from_utf8(raw) else {
            return Some(warning(format!("control message is not UTF-8: `{}`", quote(&String::from_utf8_lossy(raw)))));
        };
        match self.message(text) {
            Ok(event) => event,
            Err(msg) => Some(warning(msg)),
        }
    }

    /// Called at EOF on fd 3: an open block never got its delimiter.
    pub fn finish(&mut self) -> Option<AttemptEvent> {
        self.block.take().map(|b| {
            warning(format!(
                "output `{}` block was not terminated by `{}` before fd 3 closed; ignored",
                b.key, b.delimiter
            ))
        })
    }

    fn message(&mut self, text: &str) -> Result<Option<AttemptEvent>, String> {
        if text.trim().is_empty() {
            return Ok(None);
        }
        let (word, rest) = match text.split_once(' ') {
            Some((w, r)) => (w, Some(r)),
            None => (text, None),
        };
        match (word, rest) {
            ("heartbeat", None) => Ok(Some(AttemptEvent::Heartbeat)),
            ("progress", rest) => Ok(Some(AttemptEvent::Progress(sanitize(rest.unwrap_or(""))))),
            ("cost", Some(rest)) => parse_cost(rest).map(|c| Some(AttemptEvent::Cost(c))),
            ("cost", None) => Err("`cost` needs at least one field".to_string()),
            ("output", Some(rest)) => self.output(rest),
            _ => Err(format!("unknown control message `{}`", quote(text))),
        }
    }

    fn output(&mut self, rest: &str) -> Result<Option<AttemptEvent>, String> {
        let key_len = rest.find(|c: char| !is_key_char(c)).unwrap_or(rest.len());
        let (key, tail) = rest.split_at(key_len);
        if key.is_empty() {
            return Err(format!("output key must match [A-Za-z0-9_.-]+: `{}`", quote(rest)));
        }
        if let Some(value) = tail.strip_prefix('=') {
            if value.len() > MAX_OUTPUT_BYTES {
                return Err(too_big(key));
            }
            let (key, value) = (key.to_string(), sanitize(value));
            return Ok(Some(AttemptEvent::Output { key, value }));
        }
        match tail.strip_prefix("<<") {
            Some(delim) if !delim.is_empty() && !delim.contains(char::is_whitespace) => {
                self.block = Some(Block {
                    key: key.to_string(),
                    delimiter: delim.to_string(),
                    value: String::new(),
                    lines: 0,
                    too_big: false,
                });
                Ok(None)
            }
            _ => Err(format!("expected `output key=value` or `output key<<DELIM`, got `output {}`", quote(rest))),
        }
    }

    fn block_line(&mut self, raw: &[u8]) -> Option<AttemptEvent> {
        let block = self.block.as_mut()?;
        if raw == block.delimiter.as_bytes() {
            let block = self.block.take()?;
            if block.too_big {
                return Some(warning(too_big(&block.key)));
            }
            let value = sanitize(&block.value);
            return Some(AttemptEvent::Output { key: block.key, value });
        }
        let text = String::from_utf8_lossy(raw);
        let sep = usize::from(block.lines > 0);
        if block.too_big || block.value.len() + sep + text.len() > MAX_OUTPUT_BYTES {
            // Keep consuming lines up to the delimiter, but stop holding them in memory.
            block.too_big = true;
            block.value = String::new();
            return None;
        }
        if sep == 1 {
            block.value.push('\n');
        }
        block.value.push_str(&text);
        block.lines += 1;
        None
    }
}

fn strip_newline(raw: &[u8]) -> &[u8] {
    let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
    raw.strip_suffix(b"\r").unwrap_or(raw)
}

fn warning(msg: String) -> AttemptEvent {
    AttemptEvent::Warning(sanitize(&msg))
}

fn too_big(key: &str) -> String {
    format!("output `{key}` is larger than {MAX_OUTPUT_BYTES} bytes; ignored")
}

/// Sanitized and cut to a readable length.
pub fn quote(text: &str) -> String {
    let clean = sanitize(text);
    match clean.char_indices().nth(QUOTE_CHARS) {
        Some((i, _)) => format!("{}…", &clean[..i]),
        None => clean,
    }
}

pub fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// `usd=0.0123 input_tokens=1200 output_tokens=340 model=claude-sonnet-4-5` (and
/// `cache_read_tokens`, `cache_write_tokens`), any subset, no repeats.
fn parse_cost(fields: &str) -> Result<CostReport, String> {
    let mut cost = CostReport::default();
    let mut any = false;
    for field in fields.split_ascii_whitespace() {
        let (name, value) =
            field.split_once('=').ok_or_else(|| format!("cost field `{}` is not name=value", quote(field)))?;
        let slot_taken = match name {
            "usd" => cost.usd_micros.replace(parse_usd(value)?).is_some(),
            "input_tokens" => cost.input_tokens.replace(parse_tokens(name, value)?).is_some(),
            "output_tokens" => cost.output_tokens.replace(parse_tokens(name, value)?).is_some(),
            "cache_read_tokens" => cost.cache_read_tokens.replace(parse_tokens(name, value)?).is_some(),
            "cache_write_tokens" => cost.cache_write_tokens.replace(parse_tokens(name, value)?).is_some(),
            "model" => cost.model.replace(parse_model(value)?).is_some(),
            _ => return Err(format!("unknown cost field `{}`", quote(name))),
        };
        if slot_taken {
            return Err(format!("cost field `{name}` given twice"));
        }
        any = true;
    }
    if !any {
        return Err("`cost` needs at least one field".to_string());
    }
    Ok(cost)
}

fn parse_usd(value: &str) -> Result<u64, String> {
    parse_decimal_micros(value)
        .ok_or_else(|| format!("cost usd must be a non-negative decimal like 0.0123, got `{}`", quote(value)))
}

/// A whole number of tokens up to `MAX_TOKENS`: `2^64-1` tokens is no real call, and
/// accepting it would pin every total it is added to.
fn parse_tokens(name: &str, value: &str) -> Result<u64, String> {
    let digits_only = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    match value.parse::<u64>() {
        Ok(n) if digits_only && n <= MAX_TOKENS => Ok(n),
        _ => Err(format!("cost {name} must be a whole number of at most {MAX_TOKENS}, got `{}`", quote(value))),
    }
}

fn parse_model(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err("cost model must not be empty".to_string());
    }
    Ok(sanitize(value))
}

pub use crate::model::money::parse_decimal_micros;

/// Builds the line(s) `gaffer emit WORDS…` writes, refusing anything the parser would warn
/// about, so a typo fails loudly in the task's own shell instead of as a log warning.
pub fn format_emit(words: &[String]) -> Result<String, String> {
    let (command, rest) = words
        .split_first()
        .ok_or("usage: gaffer emit heartbeat | progress TEXT | cost FIELD=VALUE… | output KEY=VALUE")?;
    let text = match command.as_str() {
        "heartbeat" if rest.is_empty() => "heartbeat\n".to_string(),
        "heartbeat" => return Err("`heartbeat` takes no arguments".to_string()),
        "progress" => format_progress(rest)?,
        "cost" => format!("cost {}\n", rest.join(" ")),
        "output" => format_output(&rest.join(" "))?,
        other => {
            return Err(format!("unknown message `{}`: expected heartbeat, progress, cost or output", quote(other)));
        }
    };
    check_parses(&text)?;
    Ok(text)
}

fn format_progress(words: &[String]) -> Result<String, String> {
    let text = words.join(" ");
    if text.contains('\n') {
        return Err("progress text must be a single line".to_string());
    }
    Ok(format!("progress {text}\n"))
}

/// A value with newlines goes out as a `key<<DELIM` block, with a delimiter that is not
/// itself a line of the value.
fn format_output(arg: &str) -> Result<String, String> {
    let (key, value) = arg.split_once('=').ok_or("usage: gaffer emit output KEY=VALUE")?;
    if !value.contains('\n') {
        return Ok(format!("output {key}={value}\n"));
    }
    let mut delimiter = "GAFFER_EOF".to_string();
    let mut n = 0;
    while value.lines().any(|l| l == delimiter) {
        n += 1;
        delimiter = format!("GAFFER_EOF_{n}");
    }
    let value = value.strip_suffix('\n').unwrap_or(value);
    Ok(format!("output {key}<<{delimiter}\n{value}\n{delimiter}\n"))
}

fn check_parses(text: &str) -> Result<(), String> {
    let mut parser = Parser::new();
    let mut events = text.split_inclusive('\n').filter_map(|line| parser.line(line.as_bytes()));
    match events.next() {
        Some(AttemptEvent::Warning(msg)) => Err(msg),
        Some(_) => Ok(()),
        None => Err("message is incomplete".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Option<AttemptEvent> {
        Parser::new().line(line.as_bytes())
    }

    fn is_warning(e: Option<AttemptEvent>) -> bool {
        matches!(e, Some(AttemptEvent::Warning(_)))
    }

    #[test]
    fn decimal_micros_exact() {
        assert_eq!(parse_decimal_micros("0.0123"), Some(12_300));
        assert_eq!(parse_decimal_micros("0.0421"), Some(42_100));
        assert_eq!(parse_decimal_micros("12"), Some(12_000_000));
        assert_eq!(parse_decimal_micros("0.0000005"), Some(1));
        assert_eq!(parse_decimal_micros("0.00000049999"), Some(0));
        assert_eq!(parse_decimal_micros("0.9999995"), Some(1_000_000));
        assert_eq!(parse_decimal_micros("18446744073709.551615"), Some(u64::MAX));
        for bad in ["", "-1", "+1", "NaN", "inf", "1e5", "1.", ".5", "1.2.3", "18446744073710", "0x10", " 1"] {
            assert_eq!(parse_decimal_micros(bad), None, "{bad}");
        }
    }

    #[test]
    fn simple_messages() {
        assert_eq!(one("heartbeat\n"), Some(AttemptEvent::Heartbeat));
        assert_eq!(one("progress 3/12 fetching page 3\n"), Some(AttemptEvent::Progress("3/12 fetching page 3".into())));
        assert_eq!(one("progress \x1b[2Jx"), Some(AttemptEvent::Progress("^[[2Jx".into())));
        assert_eq!(one("\n"), None);
        assert_eq!(one("heartbeat\r\n"), Some(AttemptEvent::Heartbeat));
    }

    #[test]
    fn cost_lines() {
        let expected = CostReport {
            usd_micros: Some(12_300),
            input_tokens: Some(1200),
            output_tokens: Some(340),
            model: Some("claude-sonnet-4-5".into()),
            ..CostReport::default()
        };
        let line = "cost usd=0.0123 input_tokens=1200 output_tokens=340 model=claude-sonnet-4-5";
        assert_eq!(one(line), Some(AttemptEvent::Cost(expected)));
        let cached = CostReport { cache_read_tokens: Some(9000), cache_write_tokens: Some(12), ..Default::default() };
        assert_eq!(one("cost cache_read_tokens=9000 cache_write_tokens=12"), Some(AttemptEvent::Cost(cached)));
        let at_most = CostReport { output_tokens: Some(MAX_TOKENS), ..Default::default() };
        assert_eq!(one(&format!("cost output_tokens={MAX_TOKENS}")), Some(AttemptEvent::Cost(at_most)));
        let only_tokens = CostReport { input_tokens: Some(5), ..Default::default() };
        assert_eq!(one("cost input_tokens=5"), Some(AttemptEvent::Cost(only_tokens)));
        for bad in [
            "cost",
            "cost ",
            "cost usd=-1",
            "cost usd=NaN",
            "cost usd=1e5",
            "cost input_tokens=99999999999999999999999",
            "cost input_tokens=18446744073709551615",
            "cost cache_read_tokens=1000000000001",
            "cost input_tokens=-3",
            "cost input_tokens=+3",
            "cost usd=1 usd=2",
            "cost color=blue",
            "cost model=",
            "cost usd",
        ] {
            assert!(is_warning(one(bad)), "{bad}");
        }
    }

    #[test]
    fn outputs() {
        let out = |k: &str, v: &str| Some(AttemptEvent::Output { key: k.into(), value: v.into() });
        assert_eq!(one("output url=https://x/?a=b c"), out("url", "https://x/?a=b c"));
        assert_eq!(one("output k="), out("k", ""));
        assert!(is_warning(one("output =v")));
        assert!(is_warning(one("output k v")));
        assert!(is_warning(one("output k<<")));
        let mut p = Parser::new();
        assert_eq!(p.line(b"output notes<<END\n"), None);
        assert_eq!(p.line(b"line one\n"), None);
        assert_eq!(p.line(b"heartbeat\n"), None);
        assert_eq!(p.line(b"END\n"), out("notes", "line one\nheartbeat"));
        assert_eq!(p.line(b"heartbeat\n"), Some(AttemptEvent::Heartbeat));
        assert_eq!(p.finish(), None);
    }

    #[test]
    fn unterminated_and_oversized_blocks() {
        let mut p = Parser::new();
        assert_eq!(p.line(b"output a<<EOF"), None);
        assert_eq!(p.line(b"x"), None);
        assert!(is_warning(p.finish()));

        let big = "y".repeat(600 * 1024);
        assert_eq!(p.line(b"output b<<EOF"), None);
        assert_eq!(p.line(big.as_bytes()), None);
        assert_eq!(p.line(big.as_bytes()), None);
        assert!(is_warning(p.line(b"EOF")));
        assert!(is_warning(one(&format!("output c={}", "z".repeat(MAX_OUTPUT_BYTES + 1)))));
    }

    #[test]
    fn unknown_lines_are_quoted_short_and_clean() {
        let Some(AttemptEvent::Warning(msg)) = one(&format!("\x1b]0;x\x07{}", "a".repeat(500))) else {
            panic!("expected warning");
        };
        assert!(msg.starts_with("unknown control message `^[]0;x^G"), "{msg}");
        assert!(msg.chars().count() < 260, "{msg}");
        assert!(is_warning(one("heartbeat now")));
        assert!(is_warning(Parser::new().line(b"progress \xff")));
    }

    #[test]
    fn emit_formats_and_validates() {
        let w = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(format_emit(&w(&["heartbeat"])), Ok("heartbeat\n".into()));
        assert_eq!(format_emit(&w(&["progress", "3/12", "page"])), Ok("progress 3/12 page\n".into()));
        assert_eq!(format_emit(&w(&["cost", "usd=0.5", "model=m"])), Ok("cost usd=0.5 model=m\n".into()));
        assert_eq!(format_emit(&w(&["output", "k=a", "b"])), Ok("output k=a b\n".into()));
        assert_eq!(
            format_emit(&w(&["output", "k=one\nGAFFER_EOF\ntwo\n"])),
            Ok("output k<<GAFFER_EOF_1\none\nGAFFER_EOF\ntwo\nGAFFER_EOF_1\n".into())
        );
        for bad in [
            &["heartbeat", "x"][..],
            &["cost"],
            &["cost", "usd=-1"],
            &["cost", "usd=1e3"],
            &["output", "bad key=v"],
            &["output", "novalue"],
            &["progress", "a\nb"],
            &["launch"],
            &[],
        ] {
            assert!(format_emit(&w(bad)).is_err(), "{bad:?}");
        }
    }
}
