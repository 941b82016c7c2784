//! Finds the complete top-level JSON values in a task's stdout, whatever their layout: one per
//! line (`stream-json`, JSONL), pretty-printed over many lines (`jq .`, an API response saved
//! with indentation), or a single compact object — with any plain text around them.
//!
//! It scans incrementally and keeps only the value in flight, up to [`MAX_JSON_VALUE`] bytes,
//! so a task that prints gigabytes costs gaffer no more memory than that (and a value is parsed
//! only if it has at most [`MAX_JSON_ELEMENTS`] elements). A value starts with
//! `{` or `[` as the first non-blank character of a line and ends where its brackets balance
//! (outside strings). Two rules recover from text that only looked like JSON: a raw newline
//! inside a string ends the candidate (JSON strings cannot hold one), and a `{` in column 0
//! starts a new candidate (inside a pretty-printed value every nested line is indented).

/// A top-level value larger than this is skipped. Claude's result embeds the whole answer text,
/// which is often far longer than a log line, so the bound is generous.
pub const MAX_JSON_VALUE: usize = 8 * 1024 * 1024;
/// A value with more elements than this (objects, arrays and their members) is skipped too: a
/// parsed element takes tens of bytes, so 8 MiB of `[0,0,0,…` would take hundreds of MiB to
/// read. Real results have a few thousand; their long texts are single strings.
pub const MAX_JSON_ELEMENTS: usize = 100_000;

/// What a push found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Found<'a> {
    /// The text of a complete candidate: its brackets balance (it may still not be JSON).
    Json(&'a [u8]),
    /// A value whose brackets balanced but that was larger than [`MAX_JSON_VALUE`] bytes or
    /// [`MAX_JSON_ELEMENTS`] elements.
    Oversize,
}

#[derive(Debug, Default)]
pub struct JsonValues {
    /// The candidate in flight (empty when outside one, or when it overflowed).
    buf: Vec<u8>,
    inside: bool,
    overflowed: bool,
    /// Elements of the candidate so far (see [`MAX_JSON_ELEMENTS`]).
    elements: usize,
    depth: u32,
    in_string: bool,
    escape: bool,
    /// Outside a candidate: only blanks so far on this line. Inside: at column 0.
    line_start: bool,
}

impl JsonValues {
    pub fn new() -> Self {
        JsonValues { line_start: true, ..JsonValues::default() }
    }

    /// Feeds the next bytes of stdout; `found` is called with each value they complete, in
    /// order (the caller parses only what it needs).
    pub fn push(&mut self, bytes: &[u8], mut found: impl FnMut(Found<'_>)) {
        for &b in bytes {
            if !self.inside {
                self.outside_byte(b);
            } else if self.inside_byte(b) {
                self.complete(&mut found);
            }
        }
    }

    /// True if stdout ended in the middle of a candidate (a value cut off).
    pub fn finish(&self) -> bool {
        self.inside
    }

    fn outside_byte(&mut self, b: u8) {
        match b {
            b'\n' => self.line_start = true,
            b' ' | b'\t' | b'\r' => {}
            b'{' | b'[' if self.line_start => self.begin(b),
            _ => self.line_start = false,
        }
    }

    fn begin(&mut self, b: u8) {
        self.inside = true;
        self.overflowed = false;
        self.elements = 1;
        self.depth = 1;
        self.in_string = false;
        self.escape = false;
        self.line_start = false;
        self.buf.clear();
        self.buf.push(b);
    }

    /// True when `b` completes the candidate.
    fn inside_byte(&mut self, b: u8) -> bool {
        if self.in_string {
            self.keep(b);
            match b {
                _ if self.escape => self.escape = false,
                b'\\' => self.escape = true,
                b'"' => self.in_string = false,
                b'\n' => self.abandon(),
                _ => {}
            }
            return false;
        }
        if b == b'{' && self.line_start {
            self.begin(b);
            return false;
        }
        self.line_start = b == b'\n';
        self.keep(b);
        if matches!(b, b',' | b'{' | b'[') {
            self.elements += 1;
            if self.elements > MAX_JSON_ELEMENTS && !self.overflowed {
                self.overflowed = true;
                self.buf = Vec::new();
            }
        }
        match b {
            b'"' => self.in_string = true,
            b'{' | b'[' => self.depth += 1,
            b'}' | b']' => {
                self.depth -= 1;
                return self.depth == 0;
            }
            _ => {}
        }
        false
    }

    fn keep(&mut self, b: u8) {
        if self.overflowed {
            return;
        }
        if self.buf.len() >= MAX_JSON_VALUE {
            self.overflowed = true;
            self.buf = Vec::new();
        } else {
            self.buf.push(b);
        }
    }

    /// Not JSON after all: back to looking for a line that starts one.
    fn abandon(&mut self) {
        self.inside = false;
        self.line_start = true;
        self.release();
    }

    fn complete(&mut self, found: &mut impl FnMut(Found<'_>)) {
        self.inside = false;
        // The rest of this line is not the start of a line.
        self.line_start = false;
        found(if self.overflowed { Found::Oversize } else { Found::Json(&self.buf) });
        self.release();
    }

    /// Drops the candidate, and its memory when it was a big one.
    fn release(&mut self) {
        self.buf.clear();
        if self.buf.capacity() > 64 * 1024 {
            self.buf = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// What one push found, parsed (`"oversize"` for an oversize one, nothing for non-JSON).
    fn push(s: &mut JsonValues, bytes: &[u8]) -> Vec<Value> {
        let mut out = Vec::new();
        s.push(bytes, |f| match f {
            Found::Json(text) => out.extend(serde_json::from_slice::<Value>(text).ok()),
            Found::Oversize => out.push(json!("oversize")),
        });
        out
    }

    /// Every value found in `chunks`, pushed one by one.
    fn scan(chunks: &[&str]) -> Vec<Value> {
        let mut s = JsonValues::new();
        chunks.iter().flat_map(|c| push(&mut s, c.as_bytes())).collect()
    }

    #[test]
    fn values_are_found_in_every_layout() {
        let cases: &[(&str, &[&str], Vec<Value>)] = &[
            ("compact line", &["{\"a\":1}\n"], vec![json!({"a": 1})]),
            ("no trailing newline", &["text\n{\"a\":1}"], vec![json!({"a": 1})]),
            ("jsonl stream", &["{\"a\":1}\n{\"b\":2}\n"], vec![json!({"a": 1}), json!({"b": 2})]),
            (
                "pretty",
                &["{\n  \"a\": {\n    \"b\": [\n      {\"c\": 1}\n    ]\n  }\n}\n"],
                vec![json!({"a": {"b": [{"c": 1}]}})],
            ),
            ("split across chunks", &["{\"a\":", "\"x}{\\\"\"", "}\n"], vec![json!({"a": "x}{\""})]),
            ("text around it", &["thinking...\n", "{\"a\":1}\n", "bye {\n"], vec![json!({"a": 1})]),
            ("indented top level", &["  {\"a\":1}\n"], vec![json!({"a": 1})]),
            ("a top-level array", &["[{\"a\":1},\n {\"b\":2}]\n"], vec![json!([{"a": 1}, {"b": 2}])]),
            ("brace mid-line is text", &["see {\"a\":1}\n"], vec![]),
            ("crlf", &["{\"a\":\r\n 1}\r\n"], vec![json!({"a": 1})]),
        ];
        for (name, chunks, want) in cases {
            assert_eq!(&scan(chunks), want, "{name}");
        }
    }

    #[test]
    fn text_that_only_looked_like_json_does_not_hide_what_follows() {
        // An unbalanced brace, then the real result in column 0.
        assert_eq!(scan(&["{not json\n", "{\"a\":1}\n"]), vec![json!({"a": 1})]);
        // A quote left open by text: the raw newline ends it.
        assert_eq!(scan(&["{\"it's\n", "  {\"a\":1}\n"]), vec![json!({"a": 1})]);
        // Balanced but not JSON: skipped.
        assert_eq!(scan(&["{hello}\n{\"a\":1}\n"]), vec![json!({"a": 1})]);
    }

    #[test]
    fn an_oversize_value_is_reported_and_its_memory_given_back() {
        let mut s = JsonValues::new();
        let big = format!("{{\"result\":\"{}\"}}\n", "x".repeat(MAX_JSON_VALUE));
        assert_eq!(push(&mut s, big.as_bytes()), vec![json!("oversize")]);
        assert_eq!(s.buf.capacity(), 0);
        assert_eq!(push(&mut s, b"{\"a\":1}\n"), vec![json!({"a": 1})]);
        let many = format!("[{}0]\n", "0,".repeat(MAX_JSON_ELEMENTS));
        assert_eq!(push(&mut s, many.as_bytes()), vec![json!("oversize")], "too many elements to parse cheaply");
        assert!(!s.finish());
        push(&mut s, b"{\"cut\":");
        assert!(s.finish(), "stdout ended inside a value");
    }
}
