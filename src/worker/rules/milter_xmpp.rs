//! milter-xmpp's `milter-xmpp.ini`, read as its Python `configparser.ConfigParser` reads
//! it: `[xmpp]` `jabberid`, `password`, `room`, `server`; `[milter]` `valid_from` (its
//! `iface`, `port` and `proto` name the milter's socket, which swiftdrop has no use for).
//! Values are kept as written (quotes included, as configparser keeps them) but for its
//! interpolation (`%%` is `%`, `%(key)s` another key's value of the section or of
//! `[DEFAULT]`, whose keys every section has; a lone `%` is an error); keys are any case;
//! `#` and `;` begin comment lines; an indented line continues the value above it. [`super::file`]
//! turns it into the rules milter-xmpp stood for: every message whose `From:` header is
//! `valid_from` exactly posted to the room as [`TEMPLATE`].

use std::collections::BTreeMap;
use std::path::Path;

/// milter-xmpp's message: the `Date:`, `From:` and `Subject:` lines, then the body.
pub const TEMPLATE: &str =
    "Date: {{ date }}\nFrom: {{ headers.from }}\nSubject: {{ headers.subject }}\n\n{{ body }}";

/// What a `milter-xmpp.ini` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MilterXmpp {
    pub jabberid: String,
    pub password: crate::config::Secret,
    pub room: String,
    /// `server`: a host (port 5222) or host:port; `None`: the JID's domain by its SRV
    /// record.
    pub server: Option<String>,
    /// `valid_from`: the `From:` header a message must have, exactly; `None`: every message
    /// (milter-xmpp's first versions).
    pub valid_from: Option<String>,
}

/// Reads the ini file at `path`; each problem as `FILE:LINE: what`.
pub fn read(path: &Path) -> Result<MilterXmpp, Vec<String>> {
    let shown = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| vec![format!("{shown}: cannot read: {e}")])?;
    parse(&text, &shown)
}

/// Reads an ini file's `text` (named `shown` in problems).
pub fn parse(text: &str, shown: &str) -> Result<MilterXmpp, Vec<String>> {
    let mut problems = Vec::new();
    // (section, key) -> (value, line)
    let mut values: BTreeMap<(String, String), (String, usize)> = BTreeMap::new();
    let mut section: Option<String> = None;
    let mut last: Option<(String, String)> = None;
    for (n, line) in text.lines().enumerate() {
        let number = n + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(entry) = last.as_ref().and_then(|key| values.get_mut(key)) {
                entry.0.push('\n');
                entry.0.push_str(trimmed);
                continue;
            }
        }
        if let Some(name) = trimmed.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = Some(name.trim().to_string());
            last = None;
            continue;
        }
        let Some((key, value)) = trimmed.split_once(['=', ':']) else {
            problems.push(format!("{shown}:{number}: not key=value: {trimmed:?}"));
            continue;
        };
        let Some(section) = &section else {
            problems.push(format!(
                "{shown}:{number}: {key:?} is outside any [section]"
            ));
            continue;
        };
        let key = (section.clone(), key.trim().to_ascii_lowercase());
        values.insert(key.clone(), (value.trim().to_string(), number));
        last = Some(key);
    }
    let raw = |section: &str, key: &str| {
        values
            .get(&(section.to_string(), key.to_string()))
            .or_else(|| values.get(&("DEFAULT".to_string(), key.to_string())))
            .cloned()
    };
    let mut get = |section: &str, key: &str, needed: bool| -> Option<String> {
        let found = match raw(section, key) {
            Some((value, line)) => {
                match interpolate(&value, &|k| raw(section, k).map(|v| v.0), 0) {
                    Ok(value) => Some((value, line)),
                    Err(e) => {
                        problems.push(format!("{shown}:{line}: [{section}] {key}: {e}"));
                        return None;
                    }
                }
            }
            None => None,
        };
        match found {
            Some((value, _)) if !value.is_empty() => Some(value),
            _ if needed => {
                problems.push(format!("{shown}: [{section}] {key} is missing"));
                None
            }
            _ => None,
        }
    };
    let jabberid = get("xmpp", "jabberid", true);
    let password = get("xmpp", "password", true);
    let room = get("xmpp", "room", true);
    let server = get("xmpp", "server", false);
    let valid_from = get("milter", "valid_from", false);
    match (jabberid, password, room) {
        (Some(jabberid), Some(password), Some(room)) if problems.is_empty() => Ok(MilterXmpp {
            jabberid,
            password: crate::config::Secret::new(password),
            room,
            server,
            valid_from,
        }),
        _ => Err(problems),
    }
}

/// `value` with configparser's BasicInterpolation done: `%%` is `%`, `%(key)s` the value of
/// `key` (looked up by `lookup`, itself interpolated, at most 10 deep).
fn interpolate(
    value: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    depth: usize,
) -> Result<String, String> {
    if depth > 10 {
        return Err("interpolation deeper than 10".into());
    }
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('%') {
            out.push('%');
            rest = tail;
        } else if let Some(reference) = after.strip_prefix('(') {
            // `%(key)s`: the key runs to the first `)`, which `s` must follow.
            let (key, tail) = reference
                .split_once(')')
                .and_then(|(key, tail)| Some((key, tail.strip_prefix('s')?)))
                .filter(|(key, _)| !key.is_empty())
                .ok_or_else(|| format!("bad interpolation variable reference %{after:?}"))?;
            let found = lookup(&key.to_ascii_lowercase())
                .ok_or_else(|| format!("%({key})s names no key"))?;
            out.push_str(&interpolate(&found, lookup, depth + 1)?);
            rest = tail;
        } else {
            return Err(format!(
                "'%' must be followed by '%' or '(', found {:?} (configparser refuses it too; write %%)",
                after.chars().next().map(String::from).unwrap_or_default()
            ));
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// milter-xmpp's `milter-xmpp.ini.sample`.
    const SAMPLE: &str = "[xmpp]
jabberid=alertbot@chat.example.org
password=secret
room=alerts@conference.example.org
server=chat.example.org

[milter]
#proto=inet
#iface=localhost
#port=8894
valid_from=\"root <root@milter-xmpp.local>\"
";

    #[test]
    fn the_sample_is_read_as_configparser_reads_it() {
        let ini = parse(SAMPLE, "milter-xmpp.ini").unwrap();
        assert_eq!(
            ini,
            MilterXmpp {
                jabberid: "alertbot@chat.example.org".into(),
                password: crate::config::Secret::new("secret".to_string()),
                room: "alerts@conference.example.org".into(),
                server: Some("chat.example.org".into()),
                // configparser keeps quotes.
                valid_from: Some("\"root <root@milter-xmpp.local>\"".into()),
            }
        );
        // configparser's interpolation, and [DEFAULT] under every section.
        let ini = parse(
            "[DEFAULT]\ndomain = example.org\n[xmpp]\njabberid = bot@%(domain)s\npassword = 100%%\nroom = r@conference.%(domain)s\n",
            "m.ini",
        )
        .unwrap();
        assert_eq!(ini.jabberid, "bot@example.org");
        assert_eq!(ini.password.expose(), "100%");
        assert_eq!(ini.room, "r@conference.example.org");
        let problems = parse(
            "[xmpp]\njabberid = a@b\npassword = 50%off\nroom = r@c\n",
            "m.ini",
        )
        .unwrap_err();
        assert!(
            problems[0].starts_with("m.ini:3: [xmpp] password: '%' must be followed"),
            "{problems:?}"
        );
        // configparser's sections are case-sensitive.
        assert!(parse("[XMPP]\n", "m.ini").is_err());
        let problems = parse(
            "[xmpp]\nJabberID : a@b\npassword=p\n  continued\nstray\n",
            "m.ini",
        )
        .unwrap_err();
        assert_eq!(
            problems,
            [
                "m.ini:5: not key=value: \"stray\"",
                "m.ini: [xmpp] room is missing"
            ]
        );
    }
}
