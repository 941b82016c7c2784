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

/// Micro-dollars as dollars in at most `width` characters with the `$`, for table cells: as
/// many decimals as fit (at most six, trailing zeros trimmed to cents), rounded half up, never
/// cut off (`$0.023877` in 9 characters, `$0.02388` in 8); whole dollars when no decimal fits,
/// then thousands (`$12k`).
pub fn format_usd_fit(micros: u64, width: usize) -> String {
    for decimals in (0..=6u32).rev() {
        let text = format!("${}", round_to_decimals(micros, decimals));
        if text.len() <= width || (decimals == 0 && micros < 1_000 * MICROS_PER_USD) {
            return text;
        }
    }
    let thousands = (micros / MICROS_PER_USD).saturating_add(500) / 1_000;
    format!("${thousands}k")
}

/// `micros` as dollars with `decimals` decimals (0..=6), rounded half up, trailing zeros
/// trimmed down to cents (or none for whole dollars).
fn round_to_decimals(micros: u64, decimals: u32) -> String {
    let unit = 10u64.pow(6 - decimals);
    let rounded = (u128::from(micros) + u128::from(unit / 2)) / u128::from(unit);
    let scale = 10u128.pow(decimals);
    let (whole, frac) = (rounded / scale, rounded % scale);
    if decimals == 0 {
        return whole.to_string();
    }
    let mut s = format!("{whole}.{frac:0width$}", width = decimals as usize);
    while s.ends_with('0') && s.len() > s.find('.').unwrap_or(0) + 3 {
        s.pop();
    }
    s
}

/// A JSON number's text (`0.0421`, `1e-7`, `3.75E-06`) times 10^`shift`, as micros, exactly:
/// no float is involved, so a price or a cost keeps every digit it was written with. `None`
/// for negative numbers and anything past `u64::MAX` micros.
pub fn json_number_micros(text: &str, shift: i32) -> Option<u64> {
    let (mantissa, exp) = match text.split_once(['e', 'E']) {
        None => (text, 0),
        Some((m, e)) => (m, e.parse::<i32>().ok()?),
    };
    parse_decimal_micros(&shift_decimal(mantissa, exp.checked_add(shift)?)?)
}

/// `("1.5", -3)` → `"0.0015"`; `("2", 2)` → `"200"`. Bounded so a hostile exponent cannot
/// allocate much (anything outside ±40 is either 0 micros or an overflow anyway).
fn shift_decimal(mantissa: &str, exp: i32) -> Option<String> {
    if !(-40..=40).contains(&exp) || mantissa.starts_with('-') {
        return None;
    }
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{int}{frac}");
    let point = i32::try_from(int.len()).ok()? + exp; // position of '.' within `digits`
    let text = if point <= 0 {
        format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
    } else if point as usize >= digits.len() {
        format!("{digits}{}", "0".repeat(point as usize - digits.len()))
    } else {
        let (a, b) = digits.split_at(point as usize);
        format!("{a}.{b}")
    };
    Some(text)
}

/// Micro-dollars as a JSON number of dollars (SPEC §4.1: money in JSON is a decimal number).
/// Printed through [`crate::json`], it is always plain digits (`0.000001`, never `1e-6`).
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
    fn money_fits_its_cell_rounded_never_cut() {
        let cases: &[(u64, usize, &str)] = &[
            (23_877, 9, "$0.023877"),
            (23_877, 8, "$0.02388"),
            (23_875, 7, "$0.0239"),
            (1, 9, "$0.000001"),
            (1, 8, "$0.00"),
            (0, 8, "$0.00"),
            (2_000_000, 8, "$2.00"),
            (12_345_678, 9, "$12.34568"),
            (999_999_999, 8, "$1000.00"),
            (1_234_567_890_000, 9, "$1234568"),
            (123_456_789_000_000, 8, "$123457k"),
            (u64::MAX, 12, "$18446744074k"),
        ];
        for (micros, width, want) in cases {
            assert_eq!(format_usd_fit(*micros, *width), *want, "{micros} in {width}");
        }
    }

    #[test]
    fn json_numbers_become_micros_exactly() {
        let cases: &[(&str, i32, Option<u64>)] = &[
            ("0.0421", 0, Some(42_100)),
            ("1e-7", 0, Some(0)),
            ("5e-7", 0, Some(1)),
            ("1.5e3", 0, Some(1_500_000_000)),
            ("2", 0, Some(2_000_000)),
            ("0.0020350000000000004", 0, Some(2_035)),
            ("3e-06", 6, Some(3_000_000)),
            ("3.75E-06", 6, Some(3_750_000)),
            ("1.25e-07", 6, Some(125_000)),
            ("-2", 0, None),
            ("1e300", 0, None),
            ("18446744073709.551616", 0, None),
        ];
        for (text, shift, want) in cases {
            assert_eq!(json_number_micros(text, *shift), *want, "{text} shifted {shift}");
        }
        assert_eq!(shift_decimal("1.5", -3).as_deref(), Some("0.0015"));
    }

    #[test]
    fn formats_round_trip() {
        assert_eq!(format_usd(12_300), "0.0123");
        assert_eq!(format_usd(2_000_000), "2.00");
        assert_eq!(format_usd(1), "0.000001");
        assert_eq!(usd_json(12_300).to_string(), "0.0123");
    }
}
