//! `swiftdrop postfix-config`: Postfix's configuration for a swiftdrop gateway, generated
//! from the environment (as the original SwiftDrop container's entrypoint did) and from
//! swiftdrop's own destinations, so that both always agree on who is accepted.
//!
//! Postfix accepts mail only for `relay_domains` and, within them, only for swiftdrop's
//! recipients and the forwarded addresses; everything else is refused at RCPT time. The
//! public smtpd never relays for anyone (it is not an open relay); the after-queue smtpd on
//! loopback takes what swiftdrop relays (postmaster@, forwards) and queues it.
//!
//! With `SENDER_LOGINS`, applications submit with SASL logins (Cyrus, the sasldb at
//! `SASL_DB`) and each login may use only its own sender addresses
//! (`reject_sender_login_mismatch`): a sender listed there is refused without its login, and
//! a logged-in client is refused any sender its login does not own. Postfix writes the login
//! into its `Received:` header (`(Authenticated sender: <login>@<myhostname>)`), which the
//! worker can require to match the application (`require_sasl_login`). Passwords cross the
//! network only under TLS (`TLS_CERT_FILE`, `TLS_KEY_FILE`: AUTH is offered after
//! STARTTLS only); without them the public smtpd must listen on loopback.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;

use crate::config::{Config, ConfigError, RecipientPattern, Router};

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
    /// `SENDER_LOGINS`: JSON object, SASL login → the sender address (or list) it owns.
    pub sender_logins: BTreeMap<String, Vec<String>>,
    /// `SASL_DB`: the Cyrus sasldb holding the logins' passwords (default `/etc/sasldb2`;
    /// `saslpasswd2 -c -u $MYHOSTNAME <login>` adds one).
    pub sasl_db: String,
    /// `TLS_CERT_FILE` and `TLS_KEY_FILE`: the public smtpd's certificate and key (PEM).
    pub tls: Option<(String, String)>,
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
    /// Reads `MYHOSTNAME`, `MYDOMAIN`, `RELAY_DOMAINS`, `FORWARDS`, `SENDER_LOGINS`,
    /// `SASL_DB`, `TLS_CERT_FILE` and `TLS_KEY_FILE` from `vars`.
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
            Some(json) => parse_address_map(json, true).unwrap_or_else(|e| {
                problems.push(format!("FORWARDS: {e}"));
                BTreeMap::new()
            }),
        };
        let sender_logins = match vars.get("SENDER_LOGINS").map(|s| s.trim()) {
            None | Some("") => BTreeMap::new(),
            Some(json) => parse_address_map(json, false).unwrap_or_else(|e| {
                problems.push(format!(
                    "SENDER_LOGINS: {e} (a JSON object: login -> the sender address it owns)"
                ));
                BTreeMap::new()
            }),
        };
        let mut owners: BTreeMap<&str, &str> = BTreeMap::new();
        for (login, senders) in &sender_logins {
            for sender in senders {
                if let Some(other) = owners.insert(sender, login) {
                    problems.push(format!(
                        "SENDER_LOGINS: {sender} is owned by both {other:?} and {login:?}"
                    ));
                }
            }
        }
        let sasl_db = vars
            .get("SASL_DB")
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .unwrap_or("/etc/sasldb2")
            .to_string();
        let tls = match (
            vars.get("TLS_CERT_FILE")
                .map(|s| s.trim())
                .filter(|s| !s.is_empty()),
            vars.get("TLS_KEY_FILE")
                .map(|s| s.trim())
                .filter(|s| !s.is_empty()),
        ) {
            (Some(cert), Some(key)) => Some((cert.to_string(), key.to_string())),
            (None, None) => None,
            _ => {
                problems.push("TLS_CERT_FILE and TLS_KEY_FILE: set both or neither".into());
                None
            }
        };
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        Ok(PostfixEnvironment {
            myhostname,
            mydomain,
            relay_domains,
            forwards,
            sender_logins,
            sasl_db,
            tls,
        })
    }
}

/// Parses `{"from@example.com": "to@example.net", "x@example.com": ["a@b", "c@d"]}`; with
/// `keys_are_addresses` false, the keys are names (SASL logins) instead.
fn parse_address_map(
    json: &str,
    keys_are_addresses: bool,
) -> Result<BTreeMap<String, Vec<String>>, String> {
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
        if !keys_are_addresses
            && (from.is_empty() || from.contains(|c: char| c.is_whitespace() || c == '@'))
        {
            return Err(format!("{from:?} is not a login name"));
        }
        let keys = keys_are_addresses.then_some(from);
        for address in keys.into_iter().chain(targets.iter()) {
            if !is_address(address) {
                return Err(format!(
                    "{address:?} is not an address such as user@example.com"
                ));
            }
        }
        if targets.is_empty() {
            return Err(format!("{from:?}: no target"));
        }
        let targets = if keys_are_addresses {
            targets
        } else {
            targets.iter().map(|t| t.to_lowercase()).collect()
        };
        out.insert(from.to_lowercase(), targets);
    }
    Ok(out)
}

fn is_address(s: &str) -> bool {
    matches!(s.rsplit_once('@'), Some((l, d)) if !l.is_empty() && !d.is_empty())
        && !s.contains(|c: char| c.is_whitespace() || c == '<' || c == '>' || c == ',')
}

/// Who Postfix accepts mail for.
struct Accepted {
    /// `relay_domains`: RELAY_DOMAINS, and the domains of the recipients and forwards.
    domains: Vec<String>,
    /// `relay_recipient_maps`: swiftdrop's addresses and `@domain`s, the forwarded addresses.
    recipients: Vec<String>,
    /// A destination takes every recipient (`*`): no recipient map.
    catch_all: bool,
}

/// Who Postfix accepts mail for, from RELAY_DOMAINS, the destinations and the forwards.
fn accepted(env: &PostfixEnvironment, config: &Config) -> Accepted {
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
    Accepted {
        domains,
        recipients,
        catch_all,
    }
}

/// Why Postfix configured from `env` could not do what it is asked: a `*` destination
/// without RELAY_DOMAINS leaves `relay_domains` empty (every recipient refused), and a
/// forwarded address a destination takes is stored by swiftdrop, never forwarded (the
/// filter sees the recipient before `virtual_alias_maps` rewrites it).
fn acceptance_problems(
    env: &PostfixEnvironment,
    config: &Config,
    accepted: &Accepted,
) -> Vec<String> {
    let mut problems = Vec::new();
    if accepted.catch_all && env.relay_domains.is_empty() {
        let only = if accepted.domains.is_empty() {
            "which would be empty and refuse every recipient".to_string()
        } else {
            format!("which would hold only {}", accepted.domains.join(", "))
        };
        problems.push(format!("RELAY_DOMAINS: a destination takes every recipient (*), but Postfix accepts mail only for relay_domains, {only}: set RELAY_DOMAINS to the domains this gateway receives mail for (e.g. RELAY_DOMAINS=example.com)"));
    }
    // The filter's own routing: the destination that would take each forwarded address.
    let router = Router::new(&config.destinations);
    for address in env.forwards.keys() {
        if let Some(at) = router.route(address) {
            problems.push(format!(
                "FORWARDS: {address} is taken by destination [{}]: swiftdrop would store its mail, never forward it; list that destination's addresses or domains without it",
                config.destinations[at].name
            ));
        }
    }
    problems
}

/// The generated files: `(file name, contents)`, written into one directory `dir`; or why
/// such a Postfix could not accept the mail it is meant to ([`acceptance_problems`]).
pub fn render(
    env: &PostfixEnvironment,
    config: &Config,
    services: &Services,
    dir: &str,
) -> Result<Vec<(&'static str, String)>, Vec<String>> {
    let accepted = accepted(env, config);
    let problems = acceptance_problems(env, config, &accepted);
    if !problems.is_empty() {
        return Err(problems);
    }
    let Accepted {
        domains,
        recipients,
        catch_all,
    } = accepted;

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

    let mut files = Vec::new();
    if !env.sender_logins.is_empty() {
        let _ = write!(
            main,
            "# Applications submit with SASL logins (SENDER_LOGINS); each login may use only its own
# senders, and a sender listed there only with its login.
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
smtpd_sasl_local_domain = $myhostname
smtpd_sasl_security_options = noanonymous
smtpd_sasl_authenticated_header = yes
smtpd_sender_login_maps = texthash:{dir}/sender_logins
smtpd_sender_restrictions = reject_sender_login_mismatch
"
        );
        let mut logins =
            String::from("# Sender address -> the SASL login that owns it (SENDER_LOGINS).\n");
        for (login, senders) in &env.sender_logins {
            for sender in senders {
                let _ = writeln!(logins, "{sender} {login}@{}", env.myhostname);
            }
        }
        files.push(("sender_logins", logins));
        // Debian's Postfix reads Cyrus's smtpd.conf from $config_directory/sasl/.
        files.push((
            "sasl/smtpd.conf",
            format!(
                "# Generated by `swiftdrop postfix-config`: the logins' passwords are in SASL_DB.\npwcheck_method: auxprop\nauxprop_plugin: sasldb\nsasldb_path: {}\nmech_list: PLAIN LOGIN\n",
                env.sasl_db
            ),
        ));
    }
    if let Some((cert, key)) = &env.tls {
        let _ = write!(
            main,
            "# STARTTLS for clients; SASL passwords only inside it.
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_security_level = may
smtpd_tls_auth_only = yes
"
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
    let mut out = vec![
        ("main.cf", main),
        ("master.cf", master),
        ("relay_recipients", relay_recipients),
        ("virtual", virtual_map),
    ];
    out.extend(files);
    Ok(out)
}

/// Whether `listen` (`host:port`) is on the loopback interface.
fn is_loopback(listen: &str) -> bool {
    listen
        .parse::<SocketAddr>()
        .is_ok_and(|a| a.ip().is_loopback())
        || listen.starts_with("localhost:")
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
    if !env.sender_logins.is_empty() && env.tls.is_none() && !is_loopback(&public) {
        eprintln!(
            "swiftdrop: configuration error: SENDER_LOGINS: SASL passwords would cross the network in clear on {public}: set TLS_CERT_FILE and TLS_KEY_FILE, or listen on loopback"
        );
        return ExitCode::FAILURE;
    }
    let Some(after_queue) = config.server.relay else {
        eprintln!(
            "swiftdrop: configuration error: SWIFTDROP_SERVER_RELAY is off, but the gateway needs Postfix's after-queue smtpd for postmaster@ and forwards"
        );
        return ExitCode::FAILURE;
    };
    let dir = match std::path::absolute(output) {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("swiftdrop: cannot write {}: {e}", output.display());
            return ExitCode::FAILURE;
        }
    };
    let services = Services {
        public,
        filter: config.server.listen,
        after_queue,
    };
    let files = match render(&env, config, &services, &dir.to_string_lossy()) {
        Ok(files) => files,
        Err(problems) => {
            for problem in &problems {
                eprintln!("swiftdrop: configuration error: {problem}");
            }
            return ExitCode::FAILURE;
        }
    };
    let written = files.into_iter().try_for_each(|(name, contents)| {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, contents)
    });
    match written {
        Ok(()) => {
            let sasl = if env.sender_logins.is_empty() {
                ""
            } else {
                ", sender_logins, sasl/smtpd.conf"
            };
            println!(
                "wrote main.cf, master.cf, relay_recipients, virtual{sasl} to {}",
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

    /// The files for `env` and `config`, the public smtpd on `public`, in /etc/postfix.
    fn rendered(
        env: &PostfixEnvironment,
        config: &Config,
        public: &str,
    ) -> BTreeMap<&'static str, String> {
        let services = Services {
            public: public.into(),
            filter: config.server.listen,
            after_queue: "127.0.0.1:10026".parse().unwrap(),
        };
        render(env, config, &services, "/etc/postfix")
            .unwrap()
            .into_iter()
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
    fn sender_logins_turn_sasl_on_and_each_sender_belongs_to_one_login() {
        let env = PostfixEnvironment::from_vars(vars(&[
            ("MYHOSTNAME", "mx.example.com"),
            (
                "SENDER_LOGINS",
                r#"{"Jira": "svc-jira@example.com", "splunk": ["svc-splunk@example.com", "SVC-Splunk2@example.com"]}"#,
            ),
            ("SASL_DB", "/var/lib/sasl/sasldb2"),
        ]))
        .unwrap();
        assert_eq!(env.sender_logins["jira"], ["svc-jira@example.com"]);
        let config = Config::from_sources(
            None,
            vars(&[("SWIFTDROP_A_RECIPIENTS", "alerts@example.com")]),
        )
        .unwrap();
        let files = rendered(&env, &config, "127.0.0.1:25");
        let main = &files["main.cf"];
        for line in [
            "smtpd_sasl_auth_enable = yes\n",
            "smtpd_sasl_authenticated_header = yes\n",
            "smtpd_sender_login_maps = texthash:/etc/postfix/sender_logins\n",
            "smtpd_sender_restrictions = reject_sender_login_mismatch\n",
        ] {
            assert!(main.contains(line), "{line} in {main}");
        }
        assert_eq!(
            files["sender_logins"].lines().skip(1).collect::<Vec<_>>(),
            [
                "svc-jira@example.com jira@mx.example.com",
                "svc-splunk@example.com splunk@mx.example.com",
                "svc-splunk2@example.com splunk@mx.example.com",
            ]
        );
        assert!(files["sasl/smtpd.conf"].contains("sasldb_path: /var/lib/sasl/sasldb2\n"));
        assert!(!main.contains("smtpd_tls"), "no TLS without its files");

        let err = PostfixEnvironment::from_vars(vars(&[
            ("MYHOSTNAME", "mx.example.com"),
            (
                "SENDER_LOGINS",
                r#"{"jira": "svc-x@example.com", "splunk": "svc-x@example.com"}"#,
            ),
            ("TLS_CERT_FILE", "/etc/ssl/cert.pem"),
        ]))
        .unwrap_err();
        assert_eq!(
            err.problems,
            [
                "SENDER_LOGINS: svc-x@example.com is owned by both \"jira\" and \"splunk\"",
                "TLS_CERT_FILE and TLS_KEY_FILE: set both or neither",
            ]
        );
        assert!(is_loopback("127.0.0.1:25") && !is_loopback("0.0.0.0:25"));
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
        let files = rendered(&env, &config, "0.0.0.0:25");
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

    /// A `*` destination (the embedded default) accepts nothing without RELAY_DOMAINS, and a
    /// forwarded address a destination takes would be stored, not forwarded: both refused,
    /// naming the variable; with RELAY_DOMAINS the catch-all lists no recipients.
    #[test]
    fn what_postfix_could_not_accept_is_refused() {
        let env = |extra: &[(&str, &str)]| {
            let mut all = vec![("MYHOSTNAME", "mx.example.com")];
            all.extend_from_slice(extra);
            PostfixEnvironment::from_vars(vars(&all)).unwrap()
        };
        let services = Services {
            public: "127.0.0.1:25".into(),
            filter: "127.0.0.1:10025".parse().unwrap(),
            after_queue: "127.0.0.1:10026".parse().unwrap(),
        };
        let catch_all = Config::from_sources(None, vars(&[])).unwrap();
        let refused = render(&env(&[]), &catch_all, &services, "/etc/postfix").unwrap_err();
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(refused[0].starts_with("RELAY_DOMAINS: "), "{refused:?}");
        assert!(refused[0].contains("refuse every recipient"), "{refused:?}");

        let forwards = [
            ("RELAY_DOMAINS", "example.com"),
            (
                "FORWARDS",
                r#"{"postmaster@example.com": "ops@example.net"}"#,
            ),
        ];
        let refused = render(&env(&forwards), &catch_all, &services, "/etc/postfix").unwrap_err();
        assert_eq!(
            refused,
            [
                "FORWARDS: postmaster@example.com is taken by destination [DEFAULT]: swiftdrop would store its mail, never forward it; list that destination's addresses or domains without it"
            ]
        );
        // The destination the filter would route it to is named: the exact address, not
        // the catch-all listed first.
        let exact = Config::from_sources(
            None,
            vars(&[
                ("SWIFTDROP_DEFAULT_RECIPIENTS", "*"),
                ("SWIFTDROP_A_RECIPIENTS", "postmaster@example.com"),
            ]),
        )
        .unwrap();
        let refused = render(&env(&forwards), &exact, &services, "/etc/postfix").unwrap_err();
        assert!(
            refused[0].contains("taken by destination [A]: "),
            "{refused:?}"
        );
        // A catch-all beside a destination with an address: still refused without
        // RELAY_DOMAINS (it would get mail for that address's domain only).
        let refused = render(&env(&[]), &exact, &services, "/etc/postfix").unwrap_err();
        assert!(
            refused[0].contains("which would hold only example.com"),
            "{refused:?}"
        );

        let domains = env(&[("RELAY_DOMAINS", "example.com, example.org")]);
        let main = &rendered(&domains, &catch_all, "127.0.0.1:25")["main.cf"];
        assert!(
            main.contains("relay_domains = example.com, example.org\n"),
            "{main}"
        );
        assert!(!main.contains("relay_recipient_maps"), "{main}");
    }
}
