//! `swiftdrop postfix-config`: Postfix's configuration for a swiftdrop gateway, generated
//! from the environment (as the original SwiftDrop container's entrypoint did) and from
//! swiftdrop's own destinations, so that both always agree on who is accepted.
//!
//! Postfix accepts mail only for `relay_domains` and, within them, only for swiftdrop's
//! recipients and the forwarded addresses; everything else is refused at RCPT time. The
//! public smtpd never relays for anyone (it is not an open relay); the after-queue smtpd on
//! loopback takes what swiftdrop relays (postmaster@, forwards) and queues it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;

use crate::config::{Config, ConfigError, RecipientPattern};

/// Inputs read from the environment, as the original image's entrypoint took them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostfixEnvironment {
    /// `MYHOSTNAME`: Postfix's host name (required).
    pub myhostname: String,
    /// `MYDOMAIN`: default the last two labels of `MYHOSTNAME`.
    pub mydomain: String,
    /// `RELAY_DOMAINS` (comma- or space-separated): domains Postfix accepts mail for; always
    /// extended with the domains of swiftdrop's recipients and of the forwarded addresses.
    pub relay_domains: Vec<String>,
    /// `FORWARDS`: JSON object, address → address or list of addresses.
    pub forwards: BTreeMap<String, Vec<String>>,
}

/// Where the generated services listen.
#[derive(Debug, Clone)]
pub struct Services {
    /// The public smtpd (default `127.0.0.1:25`; the container entrypoint says `0.0.0.0:25`).
    pub public: String,
    /// swiftdrop's address (its `listen` setting).
    pub filter: SocketAddr,
    /// The after-queue smtpd (swiftdrop's `relay` setting, default `127.0.0.1:10026`).
    pub after_queue: SocketAddr,
}

impl PostfixEnvironment {
    /// Reads `MYHOSTNAME`, `MYDOMAIN`, `RELAY_DOMAINS` and `FORWARDS` from `vars`.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<PostfixEnvironment, ConfigError> {
        let vars: BTreeMap<String, String> = vars.into_iter().collect();
        let mut problems = Vec::new();
        let myhostname = vars
            .get("MYHOSTNAME")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        if myhostname.is_empty() || myhostname.contains(char::is_whitespace) {
            problems.push(
                "MYHOSTNAME: must be set to this gateway's host name (e.g. mx.example.com)"
                    .to_string(),
            );
        }
        let mydomain = match vars.get("MYDOMAIN").map(|s| s.trim()) {
            Some(d) if !d.is_empty() => d.to_string(),
            _ => {
                let labels: Vec<&str> = myhostname.split('.').collect();
                labels[labels.len().saturating_sub(2)..].join(".")
            }
        };
        let relay_domains = vars
            .get("RELAY_DOMAINS")
            .map(|s| {
                s.split([',', ' '])
                    .map(|d| d.trim().to_lowercase())
                    .filter(|d| !d.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let forwards = match vars.get("FORWARDS").map(|s| s.trim()) {
            None | Some("") => BTreeMap::new(),
            Some(json) => parse_forwards(json).unwrap_or_else(|e| {
                problems.push(format!("FORWARDS: {e}"));
                BTreeMap::new()
            }),
        };
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        Ok(PostfixEnvironment {
            myhostname,
            mydomain,
            relay_domains,
            forwards,
        })
    }
}

/// Parses `{"from@example.com": "to@example.net", "x@example.com": ["a@b", "c@d"]}`.
fn parse_forwards(json: &str) -> Result<BTreeMap<String, Vec<String>>, String> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("not valid JSON: {e}"))?;
    let object = value
        .as_object()
        .ok_or("must be a JSON object such as {\"postmaster@example.com\": \"ops@example.net\"}")?;
    let mut out = BTreeMap::new();
    for (from, to) in object {
        let targets: Vec<String> = match to {
            serde_json::Value::String(s) => vec![s.clone()],
            serde_json::Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .ok_or_else(|| format!("{from:?}: targets must be addresses"))?,
            _ => {
                return Err(format!(
                    "{from:?}: target must be an address or a list of them"
                ));
            }
        };
        for address in std::iter::once(from).chain(targets.iter()) {
            if !is_address(address) {
                return Err(format!(
                    "{address:?} is not an address such as user@example.com"
                ));
            }
        }
        if targets.is_empty() {
            return Err(format!("{from:?}: no target"));
        }
        out.insert(from.to_lowercase(), targets);
    }
    Ok(out)
}

fn is_address(s: &str) -> bool {
    matches!(s.rsplit_once('@'), Some((l, d)) if !l.is_empty() && !d.is_empty())
        && !s.contains(|c: char| c.is_whitespace() || c == '<' || c == '>' || c == ',')
}

/// The generated files: `(file name, contents)`, written into one directory `dir`.
pub fn render(
    env: &PostfixEnvironment,
    config: &Config,
    services: &Services,
    dir: &str,
) -> Vec<(&'static str, String)> {
    let mut domains: Vec<String> = env.relay_domains.clone();
    let mut recipients: Vec<String> = Vec::new();
    let mut catch_all = false;
    for dest in &config.destinations {
        for pattern in &dest.recipients {
            match pattern {
                RecipientPattern::Address(a) => {
                    recipients.push(a.clone());
                    domains.push(domain_of(a));
                }
                RecipientPattern::Domain(d) => {
                    recipients.push(format!("@{d}"));
                    domains.push(d.clone());
                }
                RecipientPattern::Any => catch_all = true,
            }
        }
    }
    for from in env.forwards.keys() {
        recipients.push(from.clone());
        domains.push(domain_of(from));
    }
    domains.sort();
    domains.dedup();
    recipients.sort();
    recipients.dedup();

    let mut main = format!(
        "# Generated by `swiftdrop postfix-config`: change the environment, not this file.
compatibility_level = 3.6
myhostname = {host}
mydomain = {domain}
myorigin = $mydomain
mydestination =
local_recipient_maps =
local_transport = error:local delivery is disabled
alias_maps =
alias_database =
inet_interfaces = all
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
# Mail is accepted for these domains only, and within them for listed recipients only.
relay_domains = {domains}
virtual_alias_maps = texthash:{dir}/virtual
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
message_size_limit = {size}
smtputf8_enable = yes
maillog_file = /dev/stdout
",
        host = env.myhostname,
        domain = env.mydomain,
        domains = domains.join(", "),
        size = config.server.max_message_size,
    );
    if catch_all {
        main.push_str("# A destination takes every recipient (*): no recipient list.\n");
    } else {
        let _ = writeln!(
            main,
            "relay_recipient_maps = texthash:{dir}/relay_recipients"
        );
    }

    let mut relay_recipients =
        String::from("# Recipients Postfix accepts: swiftdrop's and the forwarded addresses.\n");
    for r in &recipients {
        let _ = writeln!(relay_recipients, "{r} OK");
    }
    let mut virtual_map = String::from("# Forwards (FORWARDS): address -> targets.\n");
    for (from, to) in &env.forwards {
        let _ = writeln!(virtual_map, "{from} {}", to.join(", "));
    }

    let master = format!(
        "# Generated by `swiftdrop postfix-config`: change the environment, not this file.
# The public smtpd hands every transaction to swiftdrop and never relays for anyone.
{public} inet n - n - - smtpd
  -o smtpd_proxy_filter={filter}
  -o smtpd_proxy_options=speed_adjust
  -o smtpd_proxy_timeout=100s
  -o smtpd_relay_restrictions=reject_unauth_destination
# The after-queue smtpd queues what swiftdrop relays (postmaster@, forwards).
{after} inet n - n - - smtpd
  -o smtpd_authorized_xforward_hosts=127.0.0.0/8
  -o smtpd_client_restrictions= -o smtpd_helo_restrictions= -o smtpd_sender_restrictions=
  -o smtpd_relay_restrictions= -o smtpd_recipient_restrictions=permit_mynetworks,reject
  -o mynetworks=127.0.0.0/8 -o receive_override_options=no_unknown_recipient_checks
{services}",
        public = services.public,
        filter = services.filter,
        after = services.after_queue,
        services = STANDARD_SERVICES,
    );
    vec![
        ("main.cf", main),
        ("master.cf", master),
        ("relay_recipients", relay_recipients),
        ("virtual", virtual_map),
    ]
}

fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.to_lowercase())
        .unwrap_or_default()
}

/// `swiftdrop postfix-config`: writes main.cf, master.cf and the maps for `config` into
/// `output`, with the public smtpd at `public`.
pub fn run(config: &Config, output: &std::path::Path, public: String) -> ExitCode {
    let env = match PostfixEnvironment::from_vars(crate::config::process_environment()) {
        Ok(env) => env,
        Err(err) => {
            for problem in &err.problems {
                eprintln!("swiftdrop: configuration error: {problem}");
            }
            return ExitCode::FAILURE;
        }
    };
    let Some(after_queue) = config.server.relay else {
        eprintln!(
            "swiftdrop: configuration error: SWIFTDROP_SERVER_RELAY is off, but the gateway needs Postfix's after-queue smtpd for postmaster@ and forwards"
        );
        return ExitCode::FAILURE;
    };
    let written = std::fs::create_dir_all(output)
        .and_then(|()| std::fs::canonicalize(output))
        .and_then(|dir| {
            let services = Services {
                public,
                filter: config.server.listen,
                after_queue,
            };
            for (name, contents) in render(&env, config, &services, &dir.to_string_lossy()) {
                std::fs::write(dir.join(name), contents)?;
            }
            Ok(dir)
        });
    match written {
        Ok(dir) => {
            println!(
                "wrote main.cf, master.cf, relay_recipients, virtual to {}",
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("swiftdrop: cannot write {}: {e}", output.display());
            ExitCode::FAILURE
        }
    }
}

/// Postfix's internal services, without chroot (as a container runs them); the same table
/// the test harness uses.
const STANDARD_SERVICES: &str = include_str!("postfix_services.cf");

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn environment_is_read_like_the_original_entrypoint() {
        let env = PostfixEnvironment::from_vars(vars(&[
            ("MYHOSTNAME", "mx1.mail.example.com"),
            ("RELAY_DOMAINS", "example.com, example.org"),
            ("FORWARDS", r#"{"Postmaster@example.com": "ops@example.net", "abuse@example.org": ["a@example.net", "b@example.net"]}"#),
        ]))
        .unwrap();
        assert_eq!(env.mydomain, "example.com");
        assert_eq!(env.relay_domains, ["example.com", "example.org"]);
        assert_eq!(env.forwards["postmaster@example.com"], ["ops@example.net"]);
        assert_eq!(env.forwards["abuse@example.org"].len(), 2);
    }

    #[test]
    fn bad_environment_names_the_variable() {
        let err = PostfixEnvironment::from_vars(vars(&[("FORWARDS", "[1]")])).unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
        assert!(err.problems[0].starts_with("MYHOSTNAME: "));
        assert!(err.problems[1].starts_with("FORWARDS: must be a JSON object"));
        let err = PostfixEnvironment::from_vars(vars(&[
            ("MYHOSTNAME", "mx.example.com"),
            (
                "FORWARDS",
                r#"{"postmaster@example.com": "not an address"}"#,
            ),
        ]))
        .unwrap_err();
        assert!(
            err.problems[0].contains("\"not an address\" is not an address"),
            "{err}"
        );
    }

    #[test]
    fn maps_list_exactly_the_accepted_recipients() {
        let config = Config::from_sources(
            None,
            vars(&[
                (
                    "SWIFTDROP_A_RECIPIENTS",
                    "alerts@example.com, @tickets.example.com",
                ),
                ("SWIFTDROP_SERVER_MAX_MESSAGE_SIZE", "20M"),
            ]),
        )
        .unwrap();
        let env = PostfixEnvironment::from_vars(vars(&[
            ("MYHOSTNAME", "mx.example.com"),
            (
                "FORWARDS",
                r#"{"postmaster@example.com": "ops@example.net"}"#,
            ),
        ]))
        .unwrap();
        let services = Services {
            public: "0.0.0.0:25".into(),
            filter: config.server.listen,
            after_queue: "127.0.0.1:10026".parse().unwrap(),
        };
        let files: BTreeMap<_, _> = render(&env, &config, &services, "/etc/postfix")
            .into_iter()
            .collect();
        let main = &files["main.cf"];
        assert!(
            main.contains("relay_domains = example.com, tickets.example.com\n"),
            "{main}"
        );
        assert!(main.contains("relay_recipient_maps = texthash:/etc/postfix/relay_recipients\n"));
        assert!(main.contains(&format!("message_size_limit = {}\n", 20 << 20)));
        assert_eq!(
            files["relay_recipients"]
                .lines()
                .skip(1)
                .collect::<Vec<_>>(),
            [
                "@tickets.example.com OK",
                "alerts@example.com OK",
                "postmaster@example.com OK"
            ]
        );
        assert!(files["virtual"].contains("postmaster@example.com ops@example.net\n"));
        let master = &files["master.cf"];
        assert!(master.starts_with("# Generated"));
        assert!(master.contains(
            "0.0.0.0:25 inet n - n - - smtpd\n  -o smtpd_proxy_filter=127.0.0.1:10025\n"
        ));
        assert!(master.contains("-o smtpd_relay_restrictions=reject_unauth_destination\n"));
        assert!(master.contains("127.0.0.1:10026 inet n - n - - smtpd\n  -o smtpd_authorized_xforward_hosts=127.0.0.0/8\n"));
    }
}
