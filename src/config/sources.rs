//! The two sources of configuration, read into one raw table: `SWIFTDROP_<SECTION>_<OPTION>`
//! variables (with `envy`) and the ini file (with `config`). Every raw value remembers
//! where it came from, so that a problem names its variable or file line.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use crate::util::failpoint;

/// The section that holds global settings.
pub const SERVER_SECTION: &str = "SERVER";
/// The section whose options every destination inherits.
pub const DEFAULT_SECTION: &str = "DEFAULT";
/// Prefix of every configuration variable.
pub const ENV_PREFIX: &str = "SWIFTDROP_";

/// Where a raw value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Origin {
    Env(String),
    File {
        path: String,
        line: Option<usize>,
        section: String,
        option: String,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Env(var) => f.write_str(var),
            Origin::File {
                path,
                line: Some(line),
                section,
                option,
            } => write!(f, "{path}:{line}: [{section}] {option}"),
            Origin::File {
                path,
                line: None,
                section,
                option,
            } => write!(f, "{path}: [{section}] {option}"),
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct RawValue {
    pub(super) value: String,
    pub(super) origin: Origin,
}

/// Options of one section, by lowercased option name.
pub(super) type RawSection = BTreeMap<String, RawValue>;

/// Sections by uppercased name, remembering the name as first written and the order.
#[derive(Debug, Default)]
pub(super) struct RawConfig {
    pub(super) sections: Vec<(String, RawSection)>,
}

impl RawConfig {
    pub(super) fn section_mut(&mut self, name: &str) -> &mut RawSection {
        let idx = match self
            .sections
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some(idx) => idx,
            None => {
                self.sections.push((name.to_string(), RawSection::new()));
                self.sections.len() - 1
            }
        };
        &mut self.sections[idx].1
    }

    pub(super) fn section(&self, name: &str) -> Option<&RawSection> {
        self.sections
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, s)| s)
    }
}

/// The process environment: every other module gets its variables from here.
pub fn process_environment() -> Vec<(String, String)> {
    std::env::vars().collect()
}

/// Reads the ini file into `raw` with the `config` crate; values keep their file line.
pub(super) fn read_file(path: &Path, raw: &mut RawConfig) -> Result<(), String> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: cannot read: {e}"))?;
    let parsed = config::Source::collect(&config::File::from_str(&text, config::FileFormat::Ini))
        .map_err(|e| format!("{shown}: not a valid ini file: {e}"))?;
    // The order of sections in the file decides the order of destinations.
    let mut sections: Vec<(String, config::Map<String, config::Value>)> = Vec::new();
    for (name, value) in parsed {
        match value.into_table() {
            Ok(table) => sections.push((name, table)),
            Err(_) => {
                return Err(format!(
                    "{shown}:{}: option {name:?} is outside any section: put it under [SERVER] or [DEFAULT]",
                    find_line(&text, None, &name).unwrap_or(0)
                ));
            }
        }
    }
    sections.sort_by_key(|(name, _)| find_section_line(&text, name).unwrap_or(usize::MAX));
    for (section, table) in sections {
        let target = raw.section_mut(&section);
        for (option, value) in table {
            let value = value
                .into_string()
                .map_err(|e| format!("{shown}: [{section}] {option}: {e}"))?;
            let line = find_line(&text, Some(&section), &option);
            target.insert(
                option.to_ascii_lowercase(),
                RawValue {
                    value,
                    origin: Origin::File {
                        path: shown.clone(),
                        line,
                        section: section.clone(),
                        option: option.clone(),
                    },
                },
            );
        }
    }
    Ok(())
}

/// Line (1-based) of the `[section]` header.
pub(super) fn find_section_line(text: &str, section: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            l.trim()
                .strip_prefix('[')
                .and_then(|l| l.strip_suffix(']'))
                .is_some_and(|name| name.trim().eq_ignore_ascii_case(section))
        })
        .map(|i| i + 1)
}

/// Line (1-based) where `option` is set inside `section` (`None`: before any section).
pub(super) fn find_line(text: &str, section: Option<&str>, option: &str) -> Option<usize> {
    let mut current: Option<String> = None;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.trim().to_string());
            continue;
        }
        let in_section = match (section, &current) {
            (None, None) => true,
            (Some(want), Some(cur)) => want.eq_ignore_ascii_case(cur),
            _ => false,
        };
        let key = line.split(['=', ':']).next().unwrap_or("").trim();
        if in_section && key.eq_ignore_ascii_case(option) {
            return Some(i + 1);
        }
    }
    None
}

/// Reads `SWIFTDROP_<SECTION>_<OPTION>` variables with `envy`.
pub(super) fn read_env(
    vars: impl IntoIterator<Item = (String, String)>,
    raw: &mut RawConfig,
    problems: &mut Vec<String>,
) {
    let vars: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k != failpoint::VARIABLE)
        .collect();
    let map: HashMap<String, String> = match envy::prefixed(ENV_PREFIX).from_iter(vars) {
        Ok(map) => map,
        Err(e) => {
            problems.push(format!("{ENV_PREFIX}*: {e}"));
            return;
        }
    };
    // Sorted, so that destinations that exist only in the environment have a stable order.
    let mut entries: Vec<_> = map.into_iter().collect();
    entries.sort();
    for (name, value) in entries {
        let var = format!("{ENV_PREFIX}{}", name.to_ascii_uppercase());
        match name.split_once('_') {
            Some((section, option)) if !section.is_empty() && !option.is_empty() => {
                raw.section_mut(&section.to_ascii_uppercase()).insert(
                    option.to_string(),
                    RawValue {
                        value,
                        origin: Origin::Env(var),
                    },
                );
            }
            _ => problems.push(format!(
                "{var}: not a configuration variable: expected {ENV_PREFIX}<SECTION>_<OPTION>"
            )),
        }
    }
}

pub(super) fn problem(origin: &Origin, message: impl fmt::Display) -> String {
    format!("{origin}: {message}")
}
