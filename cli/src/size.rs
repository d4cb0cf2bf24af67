//! Parsing and printing byte counts: "4096", "4k", "64M", "1.5G", "1GiB", "0x1000", "0x10k".
//!
//! Suffixes are binary (1K = 1024) and case-insensitive; an optional "B" or "iB" may follow the
//! letter. Shared by `mkfs --size` and the `io` commands' offsets and lengths.

/// Parses a byte count with an optional K/M/G/T/P/E suffix and an optional 0x prefix.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty size".into());
    }
    let (digits, radix, rest) = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        let end = h.find(|c: char| !c.is_ascii_hexdigit()).unwrap_or(h.len());
        (&h[..end], 16, &h[end..])
    } else {
        let end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        (&t[..end], 10, &t[end..])
    };
    if digits.is_empty() {
        return Err(format!("invalid size {s:?}: expected a number such as 4096, 64M or 0x1000"));
    }
    let n = u64::from_str_radix(digits, radix).map_err(|_| format!("invalid size {s:?}: number too large"))?;
    // A decimal fraction ("1.5G"), which must come to a whole number of bytes.
    let (frac, rest) = match rest.strip_prefix('.').filter(|_| radix == 10) {
        Some(f) => {
            let end = f.find(|c: char| !c.is_ascii_digit()).unwrap_or(f.len());
            if end == 0 || end > 18 {
                return Err(format!("invalid size {s:?}: expected digits after the point"));
            }
            (Some(&f[..end]), &f[end..])
        }
        None => (None, rest),
    };
    let unit = rest.trim_start();
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "p" | "pb" | "pib" => 50,
        "e" | "eb" | "eib" => 60,
        _ => return Err(format!("invalid size {s:?}: unknown suffix {unit:?} (use K, M, G, T, P or E)")),
    };
    let Some(frac) = frac else {
        return n.checked_mul(1u64 << shift).ok_or_else(|| format!("invalid size {s:?}: too large"));
    };
    let scale = 10u128.pow(frac.len() as u32);
    let tenths = u128::from(n) * scale + frac.parse::<u128>().expect("digits");
    let bytes = tenths << shift;
    if bytes % scale != 0 {
        return Err(format!("invalid size {s:?}: not a whole number of bytes"));
    }
    u64::try_from(bytes / scale).map_err(|_| format!("invalid size {s:?}: too large"))
}

/// "64.0 MiB" style, for summaries.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// A size as `ls -h` shows it: bytes below 1024, else one decimal below 10 of a unit and whole
/// units above, rounded up (`1.5K`, `234M`).
pub fn human_short(bytes: u64) -> String {
    if bytes < 1024 {
        return bytes.to_string();
    }
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < 6 {
        v /= 1024.0;
        unit += 1;
    }
    let u = ["", "K", "M", "G", "T", "P", "E"][unit];
    let tenths = (v * 10.0).ceil() / 10.0;
    if tenths < 10.0 {
        format!("{tenths:.1}{u}")
    } else {
        format!("{}{u}", v.ceil())
    }
}

/// xfs_io's `cvtstr`: "4 KiB" for whole numbers of a unit's worth, "1.500 MiB" otherwise.
pub fn cvtstr(value: f64) -> String {
    const UNITS: [(&str, u32); 6] = [("EiB", 60), ("PiB", 50), ("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];
    // xfs_io decides "precise" by whether the value is a whole number.
    let precise = value.fract() == 0.0;
    for (name, shift) in UNITS {
        let unit = (1u64 << shift) as f64;
        if value >= unit {
            let v = value / unit;
            return if precise { format!("{v:.0} {name}") } else { format!("{v:.3} {name}") };
        }
    }
    if precise {
        format!("{value:.0} bytes")
    } else {
        format!("{value:.3} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_fractions_of_a_unit() {
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("0.5k"), Ok(512));
        assert_eq!(parse_size("2.25 MiB"), Ok(9 << 18));
        assert!(parse_size("1.3").unwrap_err().contains("whole number of bytes"));
        assert!(parse_size("1.G").unwrap_err().contains("digits after the point"));
        assert!(parse_size("0x1.8k").unwrap_err().contains("unknown suffix"));
    }

    #[test]
    fn plain_and_suffixed() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("4kb"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size("1P"), Ok(1 << 50));
        assert_eq!(parse_size("3E"), Ok(3 << 60));
        assert_eq!(parse_size(" 12 "), Ok(12));
        assert_eq!(parse_size("12 M"), Ok(12 << 20));
        assert_eq!(parse_size("100b"), Ok(100));
    }

    #[test]
    fn hex() {
        assert_eq!(parse_size("0x1000"), Ok(4096));
        assert_eq!(parse_size("0XfF"), Ok(255));
        assert_eq!(parse_size("0x10k"), Ok(16 << 10));
        assert_eq!(parse_size("0x10M"), Ok(16 << 20));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", " ", "k", "-1", "1.5", "12Q", "0x", "0xg", "1KK", "abc", "1 2"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn rejects_overflow() {
        assert!(parse_size("16E").is_err());
        assert!(parse_size("18446744073709551616").is_err());
        assert!(parse_size("0x10000000000000000").is_err());
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(parse_size("15E"), Ok(15 << 60));
    }

    #[test]
    fn printing() {
        assert_eq!(human(100), "100 bytes");
        assert_eq!(human(64 << 20), "64.0 MiB");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(cvtstr(4096.0), "4 KiB");
        assert_eq!(cvtstr(100.0), "100 bytes");
        assert_eq!(cvtstr(1.5 * 1048576.0 + 0.25), "1.500 MiB");
    }
}
