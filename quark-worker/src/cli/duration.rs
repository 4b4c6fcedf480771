//! Durations on the command line written as in the macros: `30s`, `5m`, `250ms`.

use std::time::Duration;

/// Parses a whole number followed by `ms`, `s`, `m`, `h` or `d`: the syntax of the macros'
/// `start_to_close = "30s"` (their parser lives in the proc-macro crate, which a binary cannot
/// call, so this one mirrors it).
pub(crate) fn parse(text: &str) -> Result<Duration, String> {
    let invalid = || {
        format!(
            "invalid duration `{text}`; expected a whole number followed by ms, s, m, h or d, \
             e.g. 30s or 5m"
        )
    };
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (n, unit) = trimmed.split_at(split);
    let n: u64 = n.parse().map_err(|_| invalid())?;
    let millis_per = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(invalid()),
    };
    n.checked_mul(millis_per)
        .map(Duration::from_millis)
        .ok_or_else(invalid)
}

/// Writes a duration in the largest unit that divides it: `30s`, `5m`, `1500ms`.
pub(crate) fn show(d: Duration) -> String {
    let millis = d.as_millis();
    if millis == 0 && !d.is_zero() {
        return format!("{}us", d.as_micros());
    }
    for (unit, per) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if millis != 0 && millis.is_multiple_of(per) {
            return format!("{}{unit}", millis / per);
        }
    }
    format!("{millis}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_parses_and_shows_durations_as_the_macros_write_them() {
        for (text, d) in [
            ("250ms", Duration::from_millis(250)),
            ("30s", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("2h", Duration::from_secs(7200)),
            ("1d", Duration::from_secs(86_400)),
        ] {
            assert_eq!(parse(text), Ok(d));
            assert_eq!(show(d), text);
        }
        assert_eq!(show(Duration::from_millis(1500)), "1500ms");
        assert_eq!(show(Duration::ZERO), "0ms");
    }

    #[test]
    fn it_refuses_durations_without_a_unit() {
        for bad in ["30", "s", "1.5s", "-1s", "5 minutes", ""] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains("e.g. 30s or 5m"), "{bad}: {err}");
        }
    }
}
