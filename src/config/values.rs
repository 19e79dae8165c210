//! Parsing of option values shared by all sections: booleans, sizes, counts, durations,
//! networks, addresses.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;

/// Parses yes/no, true/false, on/off, 1/0.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "yes" | "true" | "on" | "1" => Ok(true),
        "no" | "false" | "off" | "0" => Ok(false),
        _ => Err(format!("{s:?} is not yes or no")),
    }
}

/// Parses a byte size: a number with an optional K, M or G suffix (binary units; `KiB`,
/// `MB` and the like are read the same way).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = s[digits.len()..].to_ascii_lowercase();
    let mult: usize = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("{s:?} is not a size such as 52428800 or 50M")),
    };
    let n: usize = digits
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 52428800 or 50M"))?;
    match n.checked_mul(mult) {
        Some(0) | None => Err(format!("{s:?} must be between 1 byte and 16 EiB")),
        Some(v) => Ok(v),
    }
}

/// Parses a positive count.
pub fn parse_count(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{s:?} is not a positive whole number")),
    }
}

/// Parses a duration: whole seconds, or humantime such as `90s`, `5m`, `1m 30s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let d = match s.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s)
            .map_err(|_| format!("{s:?} is not a duration such as 60 or 60s or 5m"))?,
    };
    if d.is_zero() {
        return Err(format!("{s:?} must be longer than zero"));
    }
    // Durations are added to clocks; a century is beyond any sensible setting and keeps
    // every such sum far from overflowing.
    if d > MAX_DURATION {
        return Err(format!("{s:?} is longer than 100 years"));
    }
    Ok(d)
}

/// Parses a duration that may be zero (`0`, `0s`: "not at all"), else as [`parse_duration`].
pub fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    match humantime::parse_duration(t) {
        Ok(d) if d.is_zero() => Ok(d),
        _ if t == "0" => Ok(Duration::ZERO),
        _ => parse_duration(s),
    }
}

/// The longest duration any setting or option accepts.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Parses a comma- or space-separated list of networks (`10.0.0.0/8`) or single addresses.
pub fn parse_networks(s: &str) -> Result<Vec<IpNet>, String> {
    s.split([',', ' '])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            item.parse::<IpNet>()
                .or_else(|_| item.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{item:?} is not a network such as 127.0.0.0/8 or ::1"))
        })
        .collect()
}

/// Parses the `relay` setting: `address:port`, or `off`/`no`/`none` to refuse recipients no
/// destination takes.
pub fn parse_relay(s: &str) -> Result<Option<SocketAddr>, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "off" | "no" | "none" | "false" => Ok(None),
        addr => addr
            .parse()
            .map(Some)
            .map_err(|_| format!("{s:?} is not an address:port such as 127.0.0.1:10026, nor off")),
    }
}
