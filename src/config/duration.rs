//! Durations written as strings in the config: "250ms", "2s", "5m", "1h".

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// A duration read from a config string. Only whole numbers with a unit are
/// accepted, so `"1.5s"` or a bare `5` are errors that say what to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

/// A duration in the config's words: whole hours as hours, else seconds,
/// else milliseconds ("720h", "300s", "250ms").
impl fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if !ms.is_multiple_of(1000) {
            write!(f, "{ms}ms")
        } else if ms > 0 && ms.is_multiple_of(3_600_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else {
            write!(f, "{}s", ms / 1000)
        }
    }
}

/// Longest duration any key takes: 30 days. Longer values are mistakes (and
/// `now + delay` must never overflow a clock).
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// Parses "250ms", "2s", "5m", "1h", up to [`MAX_DURATION`]. Returns a message
/// fit for a config error.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let hint = "write a whole number with a unit: \"250ms\", \"2s\", \"5m\", \"1h\"";
    if digits.is_empty() {
        return Err(format!(
            "invalid duration {}: {hint}",
            crate::files::quoted(text)
        ));
    }
    let too_long = || {
        format!(
            "duration {} is longer than the longest allowed, 720h (30 days)",
            crate::files::quoted(text)
        )
    };
    let n: u64 = digits.parse().map_err(|_| too_long())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "invalid duration {}: {hint}",
                crate::files::quoted(text)
            ));
        }
    };
    if d > MAX_DURATION {
        return Err(too_long());
    }
    Ok(d)
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ConfigDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string such as \"250ms\", \"2s\" or \"5m\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                parse_duration(v).map(ConfigDuration).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_said_in_the_configs_words() {
        let say = |d| ConfigDuration(d).to_string();
        assert_eq!(say(Duration::from_secs(300)), "300s");
        assert_eq!(say(Duration::from_secs(90)), "90s");
        assert_eq!(say(Duration::from_secs(7200)), "2h");
        assert_eq!(say(Duration::from_millis(250)), "250ms");
        assert_eq!(say(Duration::ZERO), "0s");
        for text in ["300s", "90s", "2h", "250ms", "0s"] {
            assert_eq!(say(parse_duration(text).unwrap()), text, "round trip");
        }
    }

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn absurd_durations_are_refused_with_the_bound() {
        assert_eq!(parse_duration("720h"), Ok(MAX_DURATION));
        for bad in ["721h", "99999999999999999h", "99999999999999999999999s"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("longest allowed, 720h"), "{bad}: {err}");
        }
    }

    #[test]
    fn rejects_what_is_ambiguous() {
        for bad in ["", "5", "1.5s", "s", "-1s", "2 s", "3d", "ms"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("invalid duration"), "{bad}: {err}");
        }
    }
}
