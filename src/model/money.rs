//! Money is integer micro-dollars everywhere inside gaffer; decimals only at the edges.

/// One US dollar in micro-dollars.
pub const MICROS_PER_USD: u64 = 1_000_000;

/// Parses a non-negative decimal dollar amount (`"2.00"`, `"0.0123"`, `"3"`) into micro-dollars
/// without going through a float, so `0.1 + 0.2` style drift never reaches a budget.
/// Digits past the sixth decimal are rounded half up.
pub fn parse_usd_micros(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (whole, frac) = match text.split_once('.') {
        Some((w, f)) => (w, f),
        None => (text, ""),
    };
    let digits_ok = |s: &str| s.chars().all(|c| c.is_ascii_digit() || c == '_');
    if whole.is_empty() && frac.is_empty() || !digits_ok(whole) || !digits_ok(frac) {
        return Err(format!("`{text}` is not a non-negative decimal amount of dollars"));
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.replace('_', "").parse().map_err(|_| format!("`{text}` is too large"))?
    };
    let frac: String = frac.chars().filter(|c| *c != '_').collect();
    let mut micros_frac: u64 = 0;
    for (i, c) in frac.chars().enumerate() {
        let d = u64::from(c as u8 - b'0');
        if i < 6 {
            micros_frac = micros_frac * 10 + d;
        } else if i == 6 && d >= 5 {
            micros_frac += 1;
        }
    }
    for _ in frac.len().min(6)..6 {
        micros_frac *= 10;
    }
    whole
        .checked_mul(MICROS_PER_USD)
        .and_then(|w| w.checked_add(micros_frac))
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// Formats micro-dollars as dollars with up to six decimals, trailing zeros trimmed to cents.
pub fn format_usd(micros: u64) -> String {
    let whole = micros / MICROS_PER_USD;
    let frac = micros % MICROS_PER_USD;
    let mut s = format!("{whole}.{frac:06}");
    while s.ends_with('0') && s.len() > s.find('.').unwrap_or(0) + 3 {
        s.pop();
    }
    s
}

/// Micro-dollars as a JSON number of dollars (SPEC §4.1: money in JSON is a decimal number).
pub fn usd_json(micros: u64) -> serde_json::Value {
    // A six-decimal literal parses to the nearest f64, which serializes back to the same literal.
    serde_json::from_str(&format_usd(micros)).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_decimals_exactly() {
        assert_eq!(parse_usd_micros("2.00"), Ok(2_000_000));
        assert_eq!(parse_usd_micros("0.0123"), Ok(12_300));
        assert_eq!(parse_usd_micros("3"), Ok(3_000_000));
        assert_eq!(parse_usd_micros(".5"), Ok(500_000));
        assert_eq!(parse_usd_micros("0.0000015"), Ok(2));
        assert_eq!(parse_usd_micros("0.000001"), Ok(1));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "-1", "abc", "1.2.3", "NaN", "inf", "1e5", "99999999999999999999"] {
            assert!(parse_usd_micros(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn formats_round_trip() {
        assert_eq!(format_usd(12_300), "0.0123");
        assert_eq!(format_usd(2_000_000), "2.00");
        assert_eq!(format_usd(1), "0.000001");
        assert_eq!(usd_json(12_300).to_string(), "0.0123");
    }
}
