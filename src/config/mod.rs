//! Configuration: the only place the environment and the ini file are read (besides the
//! crash tests' `SWIFTDROP_FAILPOINT`, which is no option and is read by
//! `util::failpoint`).
//!
//! Owns: every option, its default, its check and its error text, and the memory figures
//! `max_memory` is checked against ([`memory`]). May use: `util/` only; every other room
//! reads its settings from here.
//!
//! Two sources, each read by one crate: `envy` turns `SWIFTDROP_<SECTION>_<OPTION>` variables
//! into a map, `config` parses the ini file given with `--config`. Both become one raw table
//! of sections (a variable overrides the same option from the file), which [`Config::load`]
//! validates once at start into typed settings. Every raw value remembers where it came from,
//! so an error names the variable or the file line and says what is wrong.
//!
//! Sections: `[SERVER]` holds the global settings; `[DEFAULT]` holds options that every
//! destination inherits (except `recipients`, which each destination owns) and is itself a
//! destination when it has `recipients`; `[QUEUE]` holds the queue's settings ([`queue`]);
//! every other section is a destination.
//!
//! Where each part lives: `sources` reads the variables and the file into the raw table;
//! `server` checks `[SERVER]`, `destination` every destination section, [`queue`] the
//! `[QUEUE]` section; `values` parses the kinds of values they share (sizes, durations,
//! networks).

mod destination;
pub mod memory;
pub mod queue;
mod route;
mod server;
mod sources;
mod values;

use std::fmt;
use std::path::Path;

pub use destination::{
    Backend, DestinationConfig, KeystoneV3, RecipientPattern, S3Config, Secret, SwiftAuth,
    SwiftConfig, parse_recipients,
};
pub use queue::{LOCK_VARIABLE, LockSetting, QueueSettings, RedisUrl};
pub use route::Router;
pub use server::{DELIVERY_GRACE, LogFormat, ServerSettings, parse_admin_listen};
pub use sources::{DEFAULT_SECTION, ENV_PREFIX, SERVER_SECTION, process_environment};
pub use values::{
    MAX_DURATION, parse_bool, parse_count, parse_duration, parse_networks, parse_relay, parse_size,
};

use destination::{check_overlaps, validate_destination};
use queue::{QUEUE_SECTION, validate_queue};
use server::{check_memory, validate_server};
use sources::{Origin, RawConfig, RawSection, RawValue, problem, read_env, read_file};

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Global settings (`[SERVER]`).
    pub server: ServerSettings,
    /// Where mail goes, in configuration order.
    pub destinations: Vec<DestinationConfig>,
    /// True when no destination was configured and every recipient goes to the catch-all
    /// destination built from `[DEFAULT]` (by default the Maildir `./maildir`).
    pub embedded_default: bool,
    /// How workers claim stored mail (`[QUEUE]`).
    pub queue: QueueSettings,
}

/// Everything wrong with a configuration, one line per problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// One message per problem, each naming its variable or file line.
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problems.join("\n"))
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Loads the configuration from the process environment and, if given, an ini file.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Config::from_sources(file, process_environment())
    }

    /// A warning when destination `name` is a Maildir that does not exist yet (no `cur/`):
    /// opening it makes an empty one, which a queue command or worker run from the wrong
    /// directory would otherwise show without a word. `None` for object stores and
    /// existing Maildirs.
    pub fn missing_maildir(&self, name: &str) -> Option<String> {
        let dest = self
            .destinations
            .iter()
            .find(|d| d.name.eq_ignore_ascii_case(name))?;
        match &dest.backend {
            Backend::Maildir { path } if !path.join("cur").is_dir() => {
                // Shown absolute: the directory it is relative to is the question.
                let shown = std::path::absolute(path).unwrap_or_else(|_| path.clone());
                Some(format!(
                    "there was no Maildir at {}: an empty one is made (run where serve runs, or set the destination's path)",
                    shown.display()
                ))
            }
            _ => None,
        }
    }

    /// Loads the configuration from the given variables (only `SWIFTDROP_*` ones are read)
    /// and, if given, an ini file. Tests use this to avoid touching the process environment.
    pub fn from_sources(
        file: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let mut raw = RawConfig::default();
        if let Some(path) = file {
            if let Err(problem) = read_file(path, &mut raw) {
                problems.push(problem);
            }
        }
        read_env(vars, &mut raw, &mut problems);
        let config = validate(&raw, &mut problems);
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(ConfigError { problems }),
        }
    }
}

fn validate(raw: &RawConfig, problems: &mut Vec<String>) -> Option<Config> {
    let empty = RawSection::new();
    let server = validate_server(raw.section(SERVER_SECTION).unwrap_or(&empty), problems);
    let queue = validate_queue(raw.section(QUEUE_SECTION).unwrap_or(&empty), problems);
    let defaults = raw.section(DEFAULT_SECTION).unwrap_or(&empty);

    let mut destinations = Vec::new();
    if defaults.contains_key("recipients") {
        destinations.push(validate_destination(
            DEFAULT_SECTION,
            defaults,
            &empty,
            problems,
        ));
    }
    for (name, section) in &raw.sections {
        if [SERVER_SECTION, DEFAULT_SECTION, QUEUE_SECTION]
            .iter()
            .any(|s| name.eq_ignore_ascii_case(s))
        {
            continue;
        }
        destinations.push(validate_destination(name, section, defaults, problems));
    }
    let embedded_default = destinations.is_empty();
    if embedded_default {
        let mut catch_all = RawSection::new();
        catch_all.insert(
            "recipients".into(),
            RawValue {
                value: "*".into(),
                origin: Origin::Env("(embedded default)".into()),
            },
        );
        destinations.push(validate_destination(
            DEFAULT_SECTION,
            &catch_all,
            defaults,
            problems,
        ));
    }
    let destinations: Vec<DestinationConfig> = destinations.into_iter().flatten().collect();
    check_overlaps(&destinations, problems);
    if let Some(server) = &server {
        check_memory(server, destinations.len(), problems);
    }
    Some(Config {
        server: server?,
        destinations,
        embedded_default,
        queue,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load(file: Option<&str>, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("swiftdrop.ini");
        if let Some(text) = file {
            std::fs::write(&path, text).unwrap();
        }
        Config::from_sources(file.map(|_| path.as_path()), env(vars))
    }

    #[test]
    fn nothing_configured_is_a_catch_all_maildir() {
        let c = load(None, &[("HOME", "/root")]).unwrap();
        assert!(c.embedded_default);
        assert_eq!(c.destinations.len(), 1);
        assert_eq!(c.destinations[0].recipients, vec![RecipientPattern::Any]);
        assert_eq!(
            c.destinations[0].backend,
            Backend::Maildir {
                path: "./maildir".into()
            }
        );
        assert_eq!(c.server.listen, "127.0.0.1:10025".parse().unwrap());
        assert_eq!(c.server.max_message_size, 50 << 20);
        assert_eq!(c.server.max_recipients, 1000);
        assert_eq!(c.server.idle_timeout, Duration::from_secs(300));
        assert_eq!(c.server.store_timeout, Duration::from_secs(60));
        assert_eq!(c.server.relay, Some("127.0.0.1:10026".parse().unwrap()));
    }

    #[test]
    fn env_sections_inherit_default_but_not_its_recipients() {
        let c = load(
            None,
            &[
                ("SWIFTDROP_DEFAULT_PATH", "/srv/mail"),
                ("SWIFTDROP_DEFAULT_RECIPIENTS", "ops@example.com"),
                (
                    "SWIFTDROP_ALERTS_RECIPIENTS",
                    "Alerts@Example.com, @alerts.example.com",
                ),
                ("SWIFTDROP_SERVER_MAX_MESSAGE_SIZE", "10M"),
            ],
        )
        .unwrap();
        assert!(!c.embedded_default);
        assert_eq!(c.server.max_message_size, 10 << 20);
        let names: Vec<_> = c.destinations.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["DEFAULT", "ALERTS"]);
        let alerts = &c.destinations[1];
        assert_eq!(
            alerts.recipients,
            vec![
                RecipientPattern::Address("alerts@example.com".into()),
                RecipientPattern::Domain("alerts.example.com".into())
            ]
        );
        assert_eq!(
            alerts.backend,
            Backend::Maildir {
                path: "/srv/mail".into()
            }
        );
    }

    #[test]
    fn env_overrides_the_file_and_file_order_is_kept() {
        let c = load(
            Some("[DEFAULT]\npath = /a\n\n[zeta]\nrecipients = z@example.com\n\n[alpha]\nrecipients = a@example.com\npath = /b\n"),
            &[("SWIFTDROP_ALPHA_PATH", "/c")],
        )
        .unwrap();
        let names: Vec<_> = c.destinations.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["zeta", "alpha"]);
        assert_eq!(
            c.destinations[0].backend,
            Backend::Maildir { path: "/a".into() }
        );
        assert_eq!(
            c.destinations[1].backend,
            Backend::Maildir { path: "/c".into() }
        );
    }

    #[test]
    fn drain_timeout_covers_a_delivery_and_its_rollback() {
        let c = load(None, &[]).unwrap();
        assert_eq!(c.server.drain_timeout, Duration::from_secs(75));
        // Unset, it grows with store_timeout.
        let c = load(None, &[("SWIFTDROP_SERVER_STORE_TIMEOUT", "120s")]).unwrap();
        assert_eq!(c.server.drain_timeout, Duration::from_secs(130));
        // Set too short, it is refused, naming the settings to change.
        let err = load(None, &[("SWIFTDROP_SERVER_DRAIN_TIMEOUT", "30s")]).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        let text = &err.problems[0];
        assert!(
            text.starts_with("SWIFTDROP_SERVER_DRAIN_TIMEOUT: "),
            "{text}"
        );
        assert!(
            text.contains("at least 70s") && text.contains("store_timeout"),
            "{text}"
        );
        let c = load(
            None,
            &[
                ("SWIFTDROP_SERVER_STORE_TIMEOUT", "5s"),
                ("SWIFTDROP_SERVER_DRAIN_TIMEOUT", "15s"),
            ],
        )
        .unwrap();
        assert_eq!(c.server.drain_timeout, Duration::from_secs(15));
    }

    #[test]
    fn max_memory_must_hold_one_message_at_its_largest() {
        let c = load(None, &[]).unwrap();
        assert_eq!(c.server.max_memory, 192 << 20);
        assert_eq!(c.server.spool_dir, std::env::temp_dir());
        // 8 MiB buffer + 64 KiB + 15 MiB of parts for each of two destinations.
        let two = [
            ("SWIFTDROP_A_RECIPIENTS", "a@example.com"),
            ("SWIFTDROP_A_PATH", "/srv/a"),
            ("SWIFTDROP_B_RECIPIENTS", "b@example.com"),
            ("SWIFTDROP_B_PATH", "/srv/b"),
        ];
        let fits = [&two[..], &[("SWIFTDROP_SERVER_MAX_MEMORY", "39MiB")]].concat();
        assert_eq!(load(None, &fits).unwrap().server.max_memory, 39 << 20);
        let short = [&two[..], &[("SWIFTDROP_SERVER_MAX_MEMORY", "38MiB")]].concat();
        let err = load(None, &short).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        let text = &err.problems[0];
        assert!(
            text.contains("SWIFTDROP_SERVER_MAX_MEMORY") && text.contains("2 destination(s)"),
            "{text}"
        );
        let err = load(
            None,
            &[("SWIFTDROP_SERVER_SPOOL_DIR", "/nonexistent/spool")],
        )
        .unwrap_err();
        assert!(
            err.problems[0].starts_with("SWIFTDROP_SERVER_SPOOL_DIR: "),
            "{err}"
        );
    }

    #[test]
    fn errors_name_the_variable() {
        let err = load(None, &[("SWIFTDROP_SERVER_MAX_RECIPIENTS", "lots")]).unwrap_err();
        assert_eq!(
            err.problems,
            ["SWIFTDROP_SERVER_MAX_RECIPIENTS: \"lots\" is not a positive whole number"]
        );
        let err = load(None, &[("SWIFTDROP_SERVER_LISTEN", "nowhere")]).unwrap_err();
        assert!(
            err.problems[0].starts_with("SWIFTDROP_SERVER_LISTEN: "),
            "{err}"
        );
        let err = load(None, &[("SWIFTDROP_X_RECIPIENTS", "not an address")]).unwrap_err();
        assert!(
            err.problems[0].starts_with("SWIFTDROP_X_RECIPIENTS: "),
            "{err}"
        );
        let err = load(None, &[("SWIFTDROP_NOSECTION", "1")]).unwrap_err();
        assert!(
            err.problems[0].contains("expected SWIFTDROP_<SECTION>_<OPTION>"),
            "{err}"
        );
    }

    #[test]
    fn errors_name_the_file_line() {
        let err = load(
            Some("[server]\nlisten = 127.0.0.1:1\n# comment\nidle_timeout = soon\n\n[box]\nrecipients = a@example.com\nflavour = vanilla\n"),
            &[],
        )
        .unwrap_err();
        let path_end = "swiftdrop.ini:";
        assert_eq!(err.problems.len(), 2, "{err}");
        assert!(
            err.problems[0].contains(&format!("{path_end}4: [server] idle_timeout: ")),
            "{err}"
        );
        assert!(
            err.problems[1].contains(&format!(
                "{path_end}8: [box] flavour: not an option of a maildir destination"
            )),
            "{err}"
        );
    }

    #[test]
    fn ambiguous_and_missing_recipients_are_refused() {
        let err = load(
            None,
            &[
                ("SWIFTDROP_A_RECIPIENTS", "x@example.com"),
                ("SWIFTDROP_B_RECIPIENTS", "X@example.com"),
                ("SWIFTDROP_C_PATH", "/tmp/c"),
            ],
        )
        .unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
        assert!(
            err.problems
                .iter()
                .any(|p| p.contains("[C]: destination has no recipients"))
        );
        assert!(
            err.problems
                .iter()
                .any(|p| p.contains("listed by both [A] and [B]"))
        );
    }

    #[test]
    fn original_swiftdrop_environment_is_understood() {
        let config = load(
            None,
            &[
                ("SWIFTDROP_DEFAULT_AUTH_VERSION", "3"),
                (
                    "SWIFTDROP_DEFAULT_AUTHURL",
                    "https://keystone.example:5000/v3",
                ),
                ("SWIFTDROP_DEFAULT_USER", "mailer"),
                ("SWIFTDROP_DEFAULT_KEY", "s3cret"),
                ("SWIFTDROP_DEFAULT_OS_OPTIONS_USER_DOMAIN_NAME", "users"),
                ("SWIFTDROP_DEFAULT_OS_OPTIONS_PROJECT_NAME", "mail"),
                ("SWIFTDROP_DEFAULT_OS_OPTIONS_REGION_NAME", "RegionTwo"),
                ("SWIFTDROP_DEFAULT_TIMEOUT", "15"),
                ("SWIFTDROP_OPS_RECIPIENTS", "ops@example.com"),
                ("SWIFTDROP_OPS_CONTAINER", "ops-mail"),
                ("SWIFTDROP_LEGACY_RECIPIENTS", "@legacy.example"),
                ("SWIFTDROP_LEGACY_CONTAINER", "old"),
                ("SWIFTDROP_LEGACY_AUTH_VERSION", "1"),
                (
                    "SWIFTDROP_LEGACY_AUTHURL",
                    "http://127.0.0.1:8080/auth/v1.0",
                ),
                ("SWIFTDROP_LEGACY_TENANT_NAME", "test"),
            ],
        )
        .unwrap();
        let ops = config
            .destinations
            .iter()
            .find(|d| d.name == "OPS")
            .unwrap();
        let Backend::Swift(swift) = &ops.backend else {
            panic!("{:?}", ops.backend)
        };
        assert_eq!(swift.container, "ops-mail");
        assert_eq!(swift.timeout, Duration::from_secs(15));
        let SwiftAuth::V3(v3) = &swift.auth else {
            panic!("{:?}", swift.auth)
        };
        assert_eq!(v3.user_domain_name, "users");
        assert_eq!(v3.project_name.as_deref(), Some("mail"));
        assert_eq!(v3.project_domain_name, "Default");
        assert_eq!(v3.region_name.as_deref(), Some("RegionTwo"));
        assert_eq!(v3.interface, "public");
        assert_eq!(v3.key.expose(), "s3cret");
        assert!(
            !format!("{config:?}").contains("s3cret"),
            "secrets never show in Debug"
        );
        let legacy = config
            .destinations
            .iter()
            .find(|d| d.name == "LEGACY")
            .unwrap();
        let Backend::Swift(SwiftConfig {
            auth: SwiftAuth::V1 { tenant_name, .. },
            ..
        }) = &legacy.backend
        else {
            panic!("{:?}", legacy.backend)
        };
        assert_eq!(tenant_name.as_deref(), Some("test"));
    }

    #[test]
    fn object_store_problems_are_precise() {
        let err = load(
            None,
            &[
                ("SWIFTDROP_A_RECIPIENTS", "a@example.com"),
                ("SWIFTDROP_A_AUTHURL", "ftp://x"),
                ("SWIFTDROP_A_USER", "u"),
                ("SWIFTDROP_A_OS_OPTIONS_FLAVOUR", "x"),
                ("SWIFTDROP_B_RECIPIENTS", "b@example.com"),
                ("SWIFTDROP_B_BACKEND", "s3"),
                ("SWIFTDROP_B_BUCKET", "mail"),
                ("SWIFTDROP_B_ENDPOINT", "http://127.0.0.1:8080"),
                ("SWIFTDROP_B_ACCESS_KEY_ID", "k"),
                ("SWIFTDROP_B_SECRET_ACCESS_KEY", "s"),
                ("SWIFTDROP_B_PATH", "/tmp"),
            ],
        )
        .unwrap_err();
        let all = err.to_string();
        for expected in [
            "SWIFTDROP_A_AUTHURL: \"ftp://x\" is not an http:// or https:// URL",
            "[A]: container is missing",
            "[A]: key is missing",
            "SWIFTDROP_A_OS_OPTIONS_FLAVOUR: unknown Keystone option",
            "SWIFTDROP_B_ENDPOINT: is plain http://: set allow_http = yes",
            "SWIFTDROP_B_PATH: not an option of a s3 destination [B]; it is an option of maildir destinations; known: ",
        ] {
            assert!(all.contains(expected), "{expected:?} not in:\n{all}");
        }
    }

    /// `AUTH_URL` for `AUTHURL`: the section is a Maildir; each line says why and the
    /// misspelled option gets the nearest known one; Swift lists its os_options_* keys.
    #[test]
    fn a_misspelled_backend_option_explains_the_maildir() {
        let err = load(
            None,
            &[
                ("SWIFTDROP_OPS_RECIPIENTS", "ops@example.com"),
                ("SWIFTDROP_OPS_AUTH_URL", "http://127.0.0.1:8080/auth/v1.0"),
                ("SWIFTDROP_OPS_USER", "test:tester"),
                ("SWIFTDROP_OPS_CONTIANER", "mail"),
                ("SWIFTDROP_S_RECIPIENTS", "s@example.com"),
                ("SWIFTDROP_S_AUTHURL", "http://127.0.0.1:8080/auth/v1.0"),
                ("SWIFTDROP_S_USER", "test:tester"),
                ("SWIFTDROP_S_KEY", "testing"),
                ("SWIFTDROP_S_CONTAINER", "mail"),
                ("SWIFTDROP_S_PATH", "/x"),
                ("SWIFTDROP_S_OS_OPTIONS_PROJECT_NAM", "p"),
                ("SWIFTDROP_M_RECIPIENTS", "m@example.com"),
                ("SWIFTDROP_M_PTH", "/x"),
            ],
        )
        .unwrap_err();
        let all = err.to_string();
        let maildir = "not an option of a maildir destination [OPS] (without authurl or backend, a destination is a Maildir)";
        for expected in [
            format!("SWIFTDROP_OPS_AUTH_URL: {maildir}; did you mean authurl (an option of swift destinations)?; known: recipients, backend, path"),
            format!("SWIFTDROP_OPS_USER: {maildir}; it is an option of swift destinations; known: "),
            format!("SWIFTDROP_OPS_CONTIANER: {maildir}; did you mean container (an option of swift and s3 destinations)?"),
            // A Maildir's own slip: its own option, no word of Swift.
            "SWIFTDROP_M_PTH: not an option of a maildir destination [M]; did you mean path?; known: recipients, backend, path".into(),
            "SWIFTDROP_S_OS_OPTIONS_PROJECT_NAM: unknown Keystone option; did you mean os_options_project_name?".into(),
            "SWIFTDROP_S_PATH: not an option of a swift destination [S]; it is an option of maildir destinations; known: recipients, backend, container, auth_version, authurl, user, key, tenant_name, timeout, create_container, os_options_user_domain_name, ".into(),
        ] {
            assert!(all.contains(&expected), "{expected:?} not in:\n{all}");
        }
    }

    #[test]
    fn s3_destination_defaults() {
        let config = load(
            Some("[mail]\nrecipients = *\nbackend = s3\ncontainer = box\nendpoint = http://127.0.0.1:8080\nallow_http = yes\naccess_key_id = test:tester\nsecret_access_key = testing\n"),
            &[],
        )
        .unwrap();
        let Backend::S3(s3) = &config.destinations[0].backend else {
            panic!()
        };
        assert_eq!(s3.bucket, "box");
        assert_eq!(s3.region, "us-east-1");
        assert!(s3.path_style && s3.allow_http && !s3.create_container);
    }

    #[test]
    fn value_parsers() {
        assert_eq!(parse_size("50MiB"), Ok(50 << 20));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12X").is_err());
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("18446744073709551615").is_err());
        assert!(parse_duration("99y").is_ok());
        assert!(parse_duration("101y").is_err());
        assert_eq!(parse_networks("10.0.0.0/8, ::1").unwrap().len(), 2);
        assert!(parse_networks("10.0.0.0/33").is_err());
        assert_eq!(parse_relay("OFF"), Ok(None));
        assert!(parse_relay("somewhere").is_err());
    }
}
