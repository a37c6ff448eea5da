//! Human units in config and query strings: sizes (`1MiB`, `16kB`, `512`)
//! and, for `?lag=`, either a size or a duration (`30s`).

/// Parses a byte size: a plain number of bytes, or a number with a unit
/// (`B`, `kB`/`KB`/`KiB`, `MB`/`MiB`, `GB`/`GiB`, `TB`/`TiB`; PostgreSQL's
/// `kB` and `MB` are binary, as in `postgresql.conf`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!("invalid size {text:?}: expected a number, e.g. \"1MiB\""));
    }
    let n: f64 = num.parse().map_err(|_| format!("invalid size {text:?}"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" | "b" => 1,
        "k" | "kB" | "KB" | "KiB" | "kiB" => 1 << 10,
        "M" | "MB" | "MiB" => 1 << 20,
        "G" | "GB" | "GiB" => 1 << 30,
        "T" | "TB" | "TiB" => 1 << 40,
        other => return Err(format!("invalid size {text:?}: unknown unit {other:?} (use B, kB, MiB, GiB, TiB)")),
    };
    let v = n * mult as f64;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(format!("invalid size {text:?}: out of range"));
    }
    Ok(v as u64)
}

/// Formats bytes for tables: `0 B`, `1.5 KiB`, `12.0 MiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.1} {}", UNITS[i])
}

/// A lag limit as given in `/replica?lag=`: bytes or a duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LagLimit {
    Bytes(u64),
    Time(std::time::Duration),
}

pub fn parse_lag_limit(text: &str) -> Result<LagLimit, String> {
    if let Ok(b) = parse_size(text) {
        return Ok(LagLimit::Bytes(b));
    }
    humantime::parse_duration(text.trim())
        .map(LagLimit::Time)
        .map_err(|_| format!("invalid lag {text:?}: give bytes (\"16MB\", \"1048576\") or a duration (\"30s\")"))
}

/// Serde helper for size fields written as a string or an integer.
pub mod serde_size {
    use serde::{Deserialize, Deserializer};
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u64),
        S(String),
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(n),
            Raw::S(s) => super::parse_size(&s).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("16kB").unwrap(), 16 << 10);
        assert_eq!(parse_size("1.5 GiB").unwrap(), 3 << 29);
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("MiB").is_err());
        assert_eq!(format_size(1536), "1.5 KiB");
    }

    #[test]
    fn lag_limits() {
        assert_eq!(parse_lag_limit("1MB").unwrap(), LagLimit::Bytes(1 << 20));
        assert_eq!(parse_lag_limit("30s").unwrap(), LagLimit::Time(Duration::from_secs(30)));
        assert!(parse_lag_limit("soon").is_err());
    }
}
