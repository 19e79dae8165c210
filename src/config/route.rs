//! Recipient routing: which destination stores a recipient's mail.

use std::collections::HashMap;

use super::destination::{DestinationConfig, RecipientPattern};

/// Maps recipient addresses to destination indexes. An exact address beats its domain,
/// which beats the catch-all `*`; configuration validation refuses ambiguous patterns.
#[derive(Debug, Clone, Default)]
pub struct Router {
    addresses: HashMap<String, usize>,
    domains: HashMap<String, usize>,
    any: Option<usize>,
}

impl Router {
    /// Builds the routing table; indexes refer to `destinations`.
    pub fn new(destinations: &[DestinationConfig]) -> Self {
        let mut router = Router::default();
        for (idx, dest) in destinations.iter().enumerate() {
            for pattern in &dest.recipients {
                match pattern {
                    RecipientPattern::Address(a) => {
                        router.addresses.entry(a.clone()).or_insert(idx);
                    }
                    RecipientPattern::Domain(d) => {
                        router.domains.entry(d.clone()).or_insert(idx);
                    }
                    RecipientPattern::Any => {
                        router.any.get_or_insert(idx);
                    }
                }
            }
        }
        router
    }

    /// Whether a destination takes every recipient (`*`): then nothing is relayed.
    pub fn takes_every_recipient(&self) -> bool {
        self.any.is_some()
    }

    /// The destination for `address`, compared case-insensitively, or `None`.
    pub fn route(&self, address: &str) -> Option<usize> {
        let lower = address.to_lowercase();
        if let Some(&idx) = self.addresses.get(&lower) {
            return Some(idx);
        }
        let domain = lower.rsplit_once('@').map(|(_, d)| d);
        domain
            .and_then(|d| self.domains.get(d).copied())
            .or(self.any)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Backend, parse_recipients};

    fn dest(name: &str, recipients: &str) -> DestinationConfig {
        DestinationConfig {
            name: name.into(),
            recipients: parse_recipients(recipients).unwrap(),
            backend: Backend::Maildir { path: "/x".into() },
        }
    }

    #[test]
    fn exact_beats_domain_beats_any() {
        let router = Router::new(&[
            dest("all", "*"),
            dest("dom", "@example.com"),
            dest("one", "boss@example.com"),
        ]);
        assert_eq!(router.route("Boss@Example.COM"), Some(2));
        assert_eq!(router.route("clerk@example.com"), Some(1));
        assert_eq!(router.route("x@other.example"), Some(0));
        assert_eq!(router.route("postmaster"), Some(0));
    }

    #[test]
    fn unknown_recipients_have_no_route() {
        let router = Router::new(&[dest("one", "a@example.com, @b.example")]);
        assert_eq!(router.route("a@example.com"), Some(0));
        assert_eq!(router.route("z@b.example"), Some(0));
        assert_eq!(router.route("z@sub.b.example"), None);
        assert_eq!(router.route("b@example.com"), None);
        assert_eq!(router.route(""), None);
    }
}
