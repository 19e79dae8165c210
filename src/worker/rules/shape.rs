//! A rules file of the wrong shape (a list where a text belongs, an unknown key), said in the
//! words of the file's author rather than the YAML reader's (`invalid type: map, expected a
//! string`, `expected struct FileDoc`).

/// `message` (yaml_serde's, after the key path it names) in plain words; the position
/// (` at line L column C`) is dropped: the caller names the line.
pub fn in_plain_words(message: &str) -> String {
    let message = without_position(message);
    let (path, what) = split_path(&message);
    let said = if let Some(rest) = what.strip_prefix("unknown field ") {
        unknown_key(rest)
    } else if let Some(rest) = what.strip_prefix("unknown variant ") {
        unknown_word(rest)
    } else if let Some(rest) = what.strip_prefix("missing field ") {
        format!("{} is missing", key(rest.trim_matches('`')))
    } else if let Some(rest) = what
        .strip_prefix("invalid type: ")
        .or_else(|| what.strip_prefix("invalid value: "))
    {
        wrong_type(rest)
    } else if what.contains("expected struct ") {
        "a rules file holds settings, one `key: value` per line (remote-smtp:, managers:, ...)"
            .into()
    } else if [
        "did not find",
        "found ",
        "mapping values",
        "while ",
        "block sequence",
    ]
    .iter()
    .any(|p| what.starts_with(p))
    {
        format!(
            "{what} (not well-formed YAML here: look at the indentation, tabs, and unclosed brackets or quotes)"
        )
    } else {
        what.to_string()
    };
    match path {
        Some(path) => format!("{path}: {said}"),
        None => said,
    }
}

/// The beginnings of serde's messages about a value of the wrong shape.
const SERDE_PHRASES: [&str; 5] = [
    "invalid type: ",
    "invalid value: ",
    "unknown field ",
    "unknown variant ",
    "missing field ",
];

/// `message` without yaml_serde's positions (` at line L column C`, once or, in a YAML
/// syntax error with its context, more often): the caller names the line.
fn without_position(message: &str) -> String {
    static POSITION: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r" at line \d+ column \d+").expect("a valid regex")
    });
    POSITION.replace_all(message, "").into_owned()
}

/// The key path yaml_serde puts before serde's message (`managers[0].rules[0].actions[0]`;
/// a user's own keys such as `bots.my bot` too), if any.
fn split_path(message: &str) -> (Option<&str>, &str) {
    for phrase in SERDE_PHRASES {
        if message.starts_with(phrase) {
            return (None, message);
        }
        if let Some(at) = message.find(&format!(": {phrase}")) {
            return (Some(&message[..at]), &message[at + 2..]);
        }
    }
    (None, message)
}

fn key(name: &str) -> String {
    format!("`{name}:`")
}

/// The parts of serde's message between backticks: "`a`, expected one of `b`" → a, b.
fn quoted(rest: &str) -> Vec<&str> {
    rest.split('`')
        .enumerate()
        .filter_map(|(i, part)| (i % 2 == 1).then_some(part))
        .collect()
}

/// "`filtr`, expected one of `name`, `filter`": the key, the nearest known one, the rest.
fn unknown_key(rest: &str) -> String {
    let names = quoted(rest);
    let Some((unknown, known)) = names.split_first() else {
        return format!("unknown key {rest}");
    };
    let nearest = known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(k, unknown), *k))
        .filter(|(distance, _)| *distance <= 2)
        .min();
    let hint = match nearest {
        Some((_, near)) => format!(" (did you mean {near}?)"),
        None => String::new(),
    };
    if known.is_empty() {
        format!("{} is not a key of this part{hint}", key(unknown))
    } else {
        format!(
            "{} is not a key of this part{hint}; its keys are {}",
            key(unknown),
            known.join(", ")
        )
    }
}

/// "`bogus`, expected one of `forward`, `fail`": a word that is not one of those allowed.
fn unknown_word(rest: &str) -> String {
    let words = quoted(rest);
    match words.split_first() {
        Some((word, allowed)) if !allowed.is_empty() => {
            format!("{word:?} is not one of {}", allowed.join(", "))
        }
        _ => format!("not a known word: {rest}"),
    }
}

/// "map, expected a string": what is written and what belongs there.
fn wrong_type(rest: &str) -> String {
    let (found, expected) = rest.split_once(", expected ").unwrap_or((rest, ""));
    let written = match found.split_once(' ') {
        _ if found == "map" => "a mapping (`key:` lines)".to_string(),
        _ if found == "sequence" => "a list".to_string(),
        _ if found == "unit value" => "empty".to_string(),
        Some(("string", text)) => format!("the text {text}"),
        Some(("integer" | "floating", number)) => {
            format!(
                "the number {}",
                number.trim_start_matches("point ").trim_matches('`')
            )
        }
        Some(("boolean", value)) => value.trim_matches('`').to_string(),
        _ => found.to_string(),
    };
    let wanted = match expected {
        "a string" | "string" => "a text".to_string(),
        "a sequence" => "a list (`- item` lines, or `[a, b]`)".to_string(),
        "a map" => "a mapping (`key: value` lines)".to_string(),
        "a boolean" => "true or false".to_string(),
        "usize" | "u64" | "u32" | "u16" | "u8" => "a whole number (0 or more)".to_string(),
        "i64" | "i32" => "a whole number".to_string(),
        "f64" | "f32" => "a number".to_string(),
        e if e.starts_with("struct ") => "a mapping (`key: value` lines)".to_string(),
        e => e.to_string(),
    };
    let mut said = format!("this is {written}, where {wanted} belongs");
    if found == "map" && wanted == "a text" {
        // `- mailto:` with nothing after it, or `subject: a: b` unquoted.
        said.push_str(
            ": a `word:` with nothing after it, or a value holding `: `, reads as a mapping; write the whole value on one line (`- mailto:ops@example.com`), quoted if it holds `: `",
        );
    }
    said
}

#[cfg(test)]
mod tests {
    use super::in_plain_words;

    #[test]
    fn shape_errors_in_plain_words() {
        for (message, said) in [
            (
                "managers[0].rules[0].actions[0]: invalid type: map, expected a string at line 10 column 13",
                "managers[0].rules[0].actions[0]: this is a mapping (`key:` lines), where a text belongs: a `word:` with nothing after it",
            ),
            (
                "invalid type: string \"just a string\", expected struct FileDoc",
                "this is the text \"just a string\", where a mapping (`key: value` lines) belongs",
            ),
            (
                "managers: invalid type: integer `3`, expected a sequence at line 1 column 11",
                "managers: this is the number 3, where a list (`- item` lines, or `[a, b]`) belongs",
            ),
            (
                "body_limit: invalid value: integer `-3`, expected usize at line 2 column 13",
                "body_limit: this is the number -3, where a whole number (0 or more) belongs",
            ),
            (
                "unknown field `mangers`, expected one of `remote-smtp`, `unmatched`, `managers` at line 2 column 1",
                "`mangers:` is not a key of this part (did you mean managers?); its keys are remote-smtp, unmatched, managers",
            ),
            (
                "managers[1]: missing field `name` at line 6 column 5",
                "managers[1]: `name:` is missing",
            ),
            (
                "mattermost.bots.my bot: invalid type: sequence, expected a string at line 4 column 9",
                "mattermost.bots.my bot: this is a list, where a text belongs",
            ),
            (
                "did not find expected key at line 5 column 3, while parsing a block mapping at line 2 column 1",
                "did not find expected key, while parsing a block mapping (not well-formed YAML here",
            ),
        ] {
            let plain = in_plain_words(message);
            assert!(
                plain.starts_with(said),
                "{plain}\n  does not start with\n{said}"
            );
            for internal in ["FileDoc", "struct", "usize", "invalid type", " column "] {
                assert!(!plain.contains(internal), "{plain}");
            }
        }
    }
}
