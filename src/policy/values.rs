//! Checks for the scalar values of the policy language: durations with units, Kubernetes names and
//! label selectors. Each check returns what was found and what is allowed, so the validator can report
//! both next to the field's path and position.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// A value that does not fit its field: what was found and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("found {found}; allowed: {allowed}")]
pub struct Invalid {
    /// The offending value as the user wrote it (quoted where useful).
    pub found: String,
    /// A human description of what the field accepts.
    pub allowed: String,
}

impl Invalid {
    /// A new problem from found/allowed texts.
    pub fn new(found: impl Into<String>, allowed: impl Into<String>) -> Self {
        Invalid {
            found: found.into(),
            allowed: allowed.into(),
        }
    }
}

const DURATION_ALLOWED: &str =
    "a duration with units, such as 60s, 5m, 48h, 1h30m or 7d (units: ms, s, m, h, d)";

const QUANTITY_ALLOWED: &str =
    "a Kubernetes quantity: a non-negative number with an optional suffix (250m, 0.5, 256Mi, 1Gi, 2, 1e3)";

/// Check a Kubernetes resource quantity (`250m`, `256Mi`, `1.5Gi`, `2`, `1e3`): the same grammar the API
/// server accepts for requests and limits, so a typo fails at validation, not when the Job is created.
pub fn check_quantity(text: &str) -> Result<(), Invalid> {
    let bad = || Invalid::new(format!("{text:?}"), QUANTITY_ALLOWED);
    let s = text.strip_prefix('+').unwrap_or(text);
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(end);
    let digits = number.chars().filter(char::is_ascii_digit).count();
    if digits == 0 || number.matches('.').count() > 1 {
        return Err(bad());
    }
    let ok = match suffix {
        "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P"
        | "E" => true,
        exp => exp
            .strip_prefix(['e', 'E'])
            .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
            .is_some_and(|e| !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())),
    };
    if ok { Ok(()) } else { Err(bad()) }
}

/// Parse a duration such as `60s`, `5m`, `48h`, `1h30m`, `7d` or `500ms`. A bare number is rejected
/// with a message saying units are required (a `timeout: 300` is ambiguous and a classic mistake).
pub fn parse_duration(text: &str) -> Result<Duration, Invalid> {
    let s = text.trim();
    if s.is_empty() {
        return Err(Invalid::new("an empty value", DURATION_ALLOWED));
    }
    if s.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(Invalid::new(
            format!(
                "{s:?}, a number without a unit (units are required: write {s}s for seconds or {s}m for minutes)"
            ),
            DURATION_ALLOWED,
        ));
    }
    let bad = || Invalid::new(format!("{s:?}"), DURATION_ALLOWED);
    let mut total = Duration::ZERO;
    let mut rest = s;
    let mut last_rank = usize::MAX;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let (unit, tail) = rest.split_at(unit_len);
        let (per, rank) = match unit {
            "d" => (Duration::from_secs(86_400), 5),
            "h" => (Duration::from_secs(3_600), 4),
            "m" => (Duration::from_secs(60), 3),
            "s" => (Duration::from_secs(1), 2),
            "ms" => (Duration::from_millis(1), 1),
            _ => return Err(bad()),
        };
        if rank >= last_rank {
            return Err(Invalid::new(
                format!("{s:?} (units repeated or out of order)"),
                DURATION_ALLOWED,
            ));
        }
        last_rank = rank;
        let n32 = u32::try_from(n).map_err(|_| bad())?;
        total = total
            .checked_add(per.checked_mul(n32).ok_or_else(bad)?)
            .ok_or_else(bad)?;
        rest = tail;
    }
    Ok(total)
}

/// Render a duration the way the policy language writes it (`1h30m`, `60s`, `0s`).
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    let ms = d.subsec_millis();
    if secs == 0 && ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    if ms > 0 {
        out.push_str(&format!("{ms}ms"));
    }
    out
}

const LABEL_ALLOWED: &str = "a DNS-1123 label: at most 63 characters, lowercase letters, digits and '-', \
starting and ending with a letter or digit";

/// A DNS-1123 label (policy, namespace and container names): `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, ≤ 63.
pub fn check_dns_label(s: &str) -> Result<(), Invalid> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(format!("{s:?}"), LABEL_ALLOWED))
    }
}

/// A DNS-1123 subdomain (Secret and class names): dot-separated labels, ≤ 253 characters.
pub fn check_dns_subdomain(s: &str) -> Result<(), Invalid> {
    let allowed = "a DNS-1123 subdomain: at most 253 characters, lowercase letters, digits, '-' and '.'";
    let ok = !s.is_empty() && s.len() <= 253 && s.split('.').all(|l| check_dns_label(l).is_ok());
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(format!("{s:?}"), allowed))
    }
}

fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A label key: optional DNS-subdomain prefix and `/`, then a name of ≤ 63 alphanumerics, `-`, `_`, `.`.
pub fn check_label_key(k: &str) -> Result<(), Invalid> {
    let allowed = "a label key: an optional DNS subdomain prefix and '/', then at most 63 characters \
(letters, digits, '-', '_', '.'), starting and ending with a letter or digit";
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let ok = is_qualified_name_part(name) && prefix.is_none_or(|p| check_dns_subdomain(p).is_ok());
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(format!("{k:?}"), allowed))
    }
}

/// A label value: empty, or ≤ 63 alphanumerics, `-`, `_`, `.` starting and ending alphanumeric.
pub fn check_label_value(v: &str) -> Result<(), Invalid> {
    if v.is_empty() || is_qualified_name_part(v) {
        Ok(())
    } else {
        Err(Invalid::new(
            format!("{v:?}"),
            "a label value: empty or at most 63 characters (letters, digits, '-', '_', '.'), \
starting and ending with a letter or digit",
        ))
    }
}

/// Check a whole label selector; problems come with their path relative to the selector.
pub fn check_selector(sel: &LabelSelector) -> Vec<(Vec<String>, Invalid)> {
    let mut out = Vec::new();
    for (k, v) in sel.match_labels.iter().flatten() {
        if let Err(e) = check_label_key(k) {
            out.push((vec!["matchLabels".into(), k.clone()], e));
        }
        if let Err(e) = check_label_value(v) {
            out.push((vec!["matchLabels".into(), k.clone()], e));
        }
    }
    for (i, req) in sel.match_expressions.iter().flatten().enumerate() {
        let at = |f: &str| vec!["matchExpressions".to_string(), format!("[{i}]"), f.to_string()];
        if let Err(e) = check_label_key(&req.key) {
            out.push((at("key"), e));
        }
        let values = req.values.as_deref().unwrap_or(&[]);
        match req.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => out.push((
                at("values"),
                Invalid::new(
                    "no values",
                    format!("at least one value with operator {}", req.operator),
                ),
            )),
            "Exists" | "DoesNotExist" if !values.is_empty() => out.push((
                at("values"),
                Invalid::new(
                    format!("{} values", values.len()),
                    format!("no values with operator {}", req.operator),
                ),
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => out.push((
                at("operator"),
                Invalid::new(format!("{other:?}"), "one of In, NotIn, Exists, DoesNotExist"),
            )),
        }
        for v in values {
            if let Err(e) = check_label_value(v) {
                out.push((at("values"), e));
            }
        }
    }
    out
}

/// A selector from Stork's plain label map form (`{app: cassandra}`).
pub fn selector_from_labels(labels: BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels),
        match_expressions: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_bare_number_timeout_when_parsed_then_error_says_units_required() {
        let err = parse_duration("300").unwrap_err();
        assert!(err.found.contains("units are required"), "{err}");
        assert!(err.found.contains("300s"), "{err}");
    }

    #[test]
    fn given_unit_durations_when_parsed_then_values_add_up() {
        assert_eq!(parse_duration("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("48h").unwrap(), Duration::from_secs(48 * 3600));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("1d2h").unwrap(), Duration::from_secs(93_600));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    }

    #[test]
    fn given_kubernetes_quantities_when_checking_then_suffixes_and_exponents_pass_and_typos_fail() {
        for ok in [
            "250m", "256Mi", "1Gi", "1.5Gi", "2", "0.5", "1e3", "+1k", "100E-2",
        ] {
            assert!(check_quantity(ok).is_ok(), "{ok} rejected");
        }
        for bad in ["", "Mi", "1GB", "-1", "1..5", "1 Gi", "1e", "abc"] {
            let err = check_quantity(bad).unwrap_err();
            assert!(err.allowed.contains("quantity"), "{bad}: {err}");
        }
    }

    #[test]
    fn given_malformed_durations_when_parsed_then_rejected() {
        for s in ["", "5x", "m5", "5m1h", "5s5s", "-5s", "1.5h", "99999999999h"] {
            assert!(parse_duration(s).is_err(), "{s:?} accepted");
        }
    }

    #[test]
    fn given_duration_when_formatted_then_it_parses_back() {
        for s in ["1h30m", "60s", "2d", "1m250ms"] {
            let d = parse_duration(s).unwrap();
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
    }

    #[test]
    fn given_names_when_checked_then_dns_label_rules_apply() {
        assert!(check_dns_label("cassandra-ring").is_ok());
        for bad in ["", "Cassandra", "a/b", "a..b", "-a", "a-", "a_b", &"x".repeat(64)] {
            assert!(check_dns_label(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn given_selector_with_bad_parts_when_checked_then_each_is_reported() {
        let sel: LabelSelector = serde_json::from_value(serde_json::json!({
            "matchLabels": {"app.kubernetes.io/name": "ok", "bad key!": "v", "k": "-bad"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": []},
                {"key": "x", "operator": "Maybe"},
                {"key": "y", "operator": "Exists", "values": ["z"]}
            ]
        }))
        .unwrap();
        let problems = check_selector(&sel);
        assert_eq!(problems.len(), 5, "{problems:?}");
    }
}
