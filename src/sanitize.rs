//! Untrusted text (task output, names, error text) is made inert once, where it enters gaffer:
//! C0 controls except `\n` and `\t`, DEL, C1 controls and bidi overrides become visible, so no
//! task can move the cursor, clear the screen, set the title or reorder text on a terminal.

/// Returns `text` with every control character replaced by a visible form.
pub fn sanitize(text: &str) -> String {
    if !text.chars().any(needs_escape) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        push_visible(&mut out, c);
    }
    out
}

/// Bytes that may not be UTF-8 (a raw line of task output): invalid sequences become U+FFFD.
pub fn sanitize_bytes(bytes: &[u8]) -> String {
    sanitize(&String::from_utf8_lossy(bytes))
}

fn needs_escape(c: char) -> bool {
    let u = c as u32;
    (u < 0x20 && c != '\n' && c != '\t') || u == 0x7f || (0x80..=0x9f).contains(&u) || is_bidi_control(c)
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}')
}

fn push_visible(out: &mut String, c: char) {
    let u = c as u32;
    if !needs_escape(c) {
        out.push(c);
    } else if u < 0x20 {
        out.push('^');
        out.push(char::from(b'@' + u as u8));
    } else if u == 0x7f {
        out.push_str("^?");
    } else {
        out.push_str(&format!("\\u{{{u:x}}}"));
    }
}

#[cfg(test)]
mod tests {
    use super::sanitize;

    #[test]
    fn escapes_terminal_controls() {
        assert_eq!(sanitize("a\x1b]0;pwned\x07b"), "a^[]0;pwned^Gb");
        assert_eq!(sanitize("\x1b[2J"), "^[[2J");
        assert_eq!(sanitize("x\u{9b}y"), "x\\u{9b}y");
        assert_eq!(sanitize("evil\u{202e}txt"), "evil\\u{202e}txt");
        assert_eq!(sanitize("del\x7f"), "del^?");
    }

    #[test]
    fn keeps_ordinary_text() {
        assert_eq!(sanitize("line\twith tab\nand ünïcode ✓"), "line\twith tab\nand ünïcode ✓");
    }
}
