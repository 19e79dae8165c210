//! Address patterns: `ops@example.com` (exactly, any case), `@example.com` (a domain),
//! `*-alerts@example.com` (a glob: `*`, `?`, `[...]`) or `/^nagios(-\d+)?@/` (a regex
//! between slashes). A list matches when any of its patterns does.

use regex::{Regex, RegexBuilder};

/// One address pattern.
#[derive(Debug, Clone)]
pub enum AddressPattern {
    Exact(String),
    Domain(String),
    Glob(glob::Pattern),
    Regex(Regex),
    /// A variable not set where the rules were read (`--check`, `--dry-run`): it matches
    /// nothing, so that a manager is not taken to want every message for want of it.
    Unresolved(String),
}

impl AddressPattern {
    /// Parses one pattern; the error says what is wrong with it.
    pub fn parse(pattern: &str) -> Result<AddressPattern, String> {
        let p = pattern.trim();
        if p.is_empty() {
            return Err("an empty address pattern".into());
        }
        if let Some(re) = p
            .strip_prefix('/')
            .and_then(|r| r.strip_suffix('/'))
            .filter(|r| !r.is_empty())
        {
            return RegexBuilder::new(re)
                .case_insensitive(true)
                .build()
                .map(AddressPattern::Regex)
                .map_err(|e| format!("bad regex {re:?}: {}", one_line(&e.to_string())));
        }
        if let Some(domain) = p.strip_prefix('@') {
            return Ok(AddressPattern::Domain(domain.to_ascii_lowercase()));
        }
        if p.contains(['*', '?', '[']) {
            return glob::Pattern::new(&p.to_ascii_lowercase())
                .map(AddressPattern::Glob)
                .map_err(|e| format!("bad glob {p:?}: {e}"));
        }
        Ok(AddressPattern::Exact(p.to_ascii_lowercase()))
    }

    /// Whether `address` matches (case-insensitive).
    pub fn matches(&self, address: &str) -> bool {
        let address = address.trim().trim_matches(['<', '>']).to_ascii_lowercase();
        match self {
            AddressPattern::Exact(a) => address == *a,
            AddressPattern::Domain(d) => address
                .rsplit_once('@')
                .is_some_and(|(_, domain)| domain == d),
            AddressPattern::Glob(g) => g.matches(&address),
            AddressPattern::Regex(r) => r.is_match(&address),
            AddressPattern::Unresolved(_) => false,
        }
    }
}

/// Whether any address of `addresses` matches any of `patterns`.
pub fn any_matches<'a>(
    patterns: &[AddressPattern],
    addresses: impl IntoIterator<Item = &'a str>,
) -> bool {
    addresses
        .into_iter()
        .any(|a| patterns.iter().any(|p| p.matches(a)))
}

/// A regex error on one line (the regex crate draws a multi-line picture).
pub fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, address: &str) -> bool {
        AddressPattern::parse(pattern).unwrap().matches(address)
    }

    #[test]
    fn each_kind_of_pattern_matches_what_it_says() {
        assert!(m("Ops@Example.com", "ops@example.COM"));
        assert!(!m("ops@example.com", "xops@example.com"));
        assert!(m("@example.com", "anyone@EXAMPLE.com"));
        assert!(!m("@example.com", "anyone@sub.example.com"));
        assert!(m("*-alerts@example.com", "db-alerts@example.com"));
        assert!(!m("*-alerts@example.com", "db-alert@example.com"));
        assert!(m("/^nagios(-[0-9]+)?@/", "Nagios-2@mon.example.org"));
        assert!(!m("/^nagios@/", "xnagios@mon.example.org"));
        assert!(m("ops@example.com", "<ops@example.com>"));
    }

    #[test]
    fn bad_patterns_are_named() {
        let e = AddressPattern::parse("/(unclosed/").unwrap_err();
        assert!(e.starts_with("bad regex \"(unclosed\""), "{e}");
        assert!(!e.contains('\n'));
        assert!(
            AddressPattern::parse("[x")
                .unwrap_err()
                .starts_with("bad glob")
        );
        assert!(AddressPattern::parse(" ").is_err());
    }
}
