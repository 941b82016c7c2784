//! Money is integer micro-dollars everywhere inside gaffer; decimals only at the edges.

/// One US dollar in micro-dollars.
pub const MICROS_PER_USD: u64 = 1_000_000;

/// Parses a non-negative decimal dollar amount as written in a workflow file (`"2.00"`,
/// `"0.0123"`, `"3"`, TOML's `1_000.50`) into micro-dollars, without going through a float.
pub fn parse_usd_micros(text: &str) -> Result<u64, String> {
    let text = text.trim();
    parse_decimal_micros(&text.replace('_', ""))
        .ok_or_else(|| format!("`{text}` is not a non-negative decimal amount of dollars (at most ~18 trillion)"))
}

/// Exact `digits[.digits]` → millionths, rounded half-up at the 6th decimal. No floats: a bill
/// is summed from these, and `0.1 + 0.2` must stay exact. `None` for signs, exponents, NaN,
/// infinities, garbage and anything past `u64::MAX` micros.
pub fn parse_decimal_micros(text: &str) -> Option<u64> {
    let (int_part, frac_part) = match text.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (text, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(int_part) || frac_part.is_some_and(|f| !all_digits(f)) {
        return None;
    }
    let mut micros: u64 = 0;
    for b in int_part.bytes() {
        micros = micros.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    micros = micros.checked_mul(1_000_000)?;
    let frac = frac_part.unwrap_or("").as_bytes();
    let mut scale = 100_000;
    for &b in frac.iter().take(6) {
        micros = micros.checked_add(u64::from(b - b'0') * scale)?;
        scale /= 10;
    }
    // Half-up: only the 7th decimal decides; later digits cannot carry past it.
    if frac.get(6).is_some_and(|&b| b >= b'5') {
        micros = micros.checked_add(1)?;
    }
    Some(micros)
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

/// The inverse of [`usd_json`]: dollars in JSON back to micro-dollars (0 if not a number).
pub fn micros_of_json(v: &serde_json::Value) -> u64 {
    v.as_f64().map_or(0, |usd| (usd * 1e6).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_survive_the_json_round_trip() {
        for m in [0, 1, 30_000, 1_234_567, 999_999_999] {
            assert_eq!(micros_of_json(&usd_json(m)), m);
        }
    }

    #[test]
    fn parses_decimals_exactly() {
        assert_eq!(parse_usd_micros("2.00"), Ok(2_000_000));
        assert_eq!(parse_usd_micros("0.0123"), Ok(12_300));
        assert_eq!(parse_usd_micros("3"), Ok(3_000_000));
        assert_eq!(parse_usd_micros("1_000.5"), Ok(1_000_500_000));
        assert_eq!(parse_usd_micros("0.0000015"), Ok(2));
        assert_eq!(parse_usd_micros("0.000001"), Ok(1));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "-1", "abc", "1.2.3", "NaN", "inf", "1e5", "99999999999999999999", ".5", "+3"] {
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
