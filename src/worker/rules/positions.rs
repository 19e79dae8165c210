//! Where each value of a rules file is written, from the YAML parser's own positions
//! (saphyr-parser's event stream with its spans): the checker names a problem's line by
//! the value it is about, looked for inside the part of the file it is checking (a
//! manager, a rule, the `xmpp:` section), not by a search of the text, which finds the
//! same words in a comment or in another rule first.

use saphyr_parser::{Event, Parser};

/// One step of a path into the document: a mapping's key or a sequence's index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
}

impl From<&str> for Step {
    fn from(key: &str) -> Step {
        Step::Key(key.to_string())
    }
}

impl From<usize> for Step {
    fn from(index: usize) -> Step {
        Step::Index(index)
    }
}

/// A scalar as written: where it sits, its line (1-based), its text.
#[derive(Debug)]
struct Written {
    /// A key's path ends with the key itself; a value's is the path of its key.
    path: Vec<Step>,
    line: usize,
    text: String,
}

/// The scalars of one YAML document, keys and values, in the order they are written.
#[derive(Debug, Default)]
pub struct Positions {
    scalars: Vec<Written>,
}

/// A mapping or sequence being read.
enum Open {
    /// The key whose value comes next (`None`: a key comes next).
    Mapping(Option<String>),
    /// The index of the next item.
    Sequence(usize),
}

impl Positions {
    /// Reads `text`. A document the parser stops in (the YAML error is reported by the
    /// reader itself) keeps the positions read before the error.
    pub fn of(text: &str) -> Positions {
        let mut scalars = Vec::new();
        let mut path: Vec<Step> = Vec::new();
        let mut open: Vec<Open> = Vec::new();
        for event in Parser::new_from_str(text) {
            let Ok((event, span)) = event else { break };
            let line = span.start.line();
            match event {
                Event::Scalar(value, ..) => {
                    match open.last_mut() {
                        Some(Open::Mapping(key @ None)) => {
                            let mut at = path.clone();
                            at.push(Step::Key(value.to_string()));
                            scalars.push(Written {
                                path: at,
                                line,
                                text: value.to_string(),
                            });
                            *key = Some(value.to_string());
                            continue;
                        }
                        _ => {
                            let at = value_path(&path, &open);
                            scalars.push(Written {
                                path: at,
                                line,
                                text: value.to_string(),
                            });
                        }
                    }
                    value_done(&mut open);
                }
                Event::Alias(_) => key_or_value_done(&mut open),
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    path = value_path(&path, &open);
                    // The container's own place, for a part without scalars.
                    scalars.push(Written {
                        path: path.clone(),
                        line,
                        text: String::new(),
                    });
                    open.push(match event {
                        Event::MappingStart(..) => Open::Mapping(None),
                        _ => Open::Sequence(0),
                    });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    open.pop();
                    // Back to the parent: the path the container was opened at, less its step.
                    if !open.is_empty() {
                        path.pop();
                    }
                    key_or_value_done(&mut open);
                }
                _ => {}
            }
        }
        Positions { scalars }
    }

    /// The line where `near` is written inside the part at `scope`: a scalar (key or
    /// value) that is `near`, else one that contains it; else the same among the settings
    /// outside `managers` (a default written at the top, which a rule uses); else the
    /// part's first line; else 1.
    pub fn line_of(&self, scope: &[Step], near: &str) -> usize {
        let near = near.trim();
        let inside = |w: &&Written| w.path.starts_with(scope);
        let managers = [Step::from("managers")];
        let anywhere = |w: &&Written| !w.path.starts_with(&managers);
        let is = |w: &&Written| !near.is_empty() && w.text.trim() == near;
        let has = |w: &&Written| !near.is_empty() && w.text.contains(near);
        let find = |within: &dyn Fn(&&Written) -> bool, test: &dyn Fn(&&Written) -> bool| {
            self.scalars
                .iter()
                .filter(within)
                .find(test)
                .map(|w| w.line)
        };
        find(&inside, &is)
            .or_else(|| find(&inside, &has))
            .or_else(|| find(&anywhere, &is))
            .or_else(|| find(&anywhere, &has))
            .or_else(|| find(&inside, &|_| true))
            .unwrap_or(1)
    }
}

/// The path of the value that comes next in the innermost open container.
fn value_path(path: &[Step], open: &[Open]) -> Vec<Step> {
    let mut at = path.to_vec();
    match open.last() {
        Some(Open::Mapping(Some(key))) => at.push(Step::Key(key.clone())),
        Some(Open::Sequence(index)) => at.push(Step::Index(*index)),
        // A mapping or sequence as a key (YAML allows it; the rules file has none): a step
        // of its own, so that its end goes back to the right place.
        Some(Open::Mapping(None)) => at.push(Step::Key(String::new())),
        None => {}
    }
    at
}

/// A node that is not a plain scalar (an alias, a mapping or a sequence) is complete: as a
/// mapping's key (YAML allows it; the rules file has none) its value comes next, else as
/// [`value_done`].
fn key_or_value_done(open: &mut [Open]) {
    match open.last_mut() {
        Some(Open::Mapping(key @ None)) => *key = Some(String::new()),
        _ => value_done(open),
    }
}

/// A value of the innermost container is complete: a mapping waits for its next key, a
/// sequence counts the item.
fn value_done(open: &mut [Open]) {
    match open.last_mut() {
        Some(Open::Mapping(key)) => *key = None,
        Some(Open::Sequence(index)) => *index += 1,
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
# pipelines.any is the gocd manager's function
managers:
  - name: gocd
    rules:
      - name: one
        filter:
          function: pipelines.any
  - name: other
    rules:
      - name: two
        filter:
          function: pipelines.any
        actions: [mailto:a@b]
xmpp:
  jabberid: bot@example.org
";

    fn at(steps: &[Step]) -> Vec<Step> {
        steps.to_vec()
    }

    #[test]
    fn a_value_is_found_in_its_part_not_first_in_the_text() {
        let p = Positions::of(DOC);
        let second_rule = at(&["managers".into(), 1.into(), "rules".into(), 0.into()]);
        assert_eq!(p.line_of(&second_rule, "pipelines.any"), 12);
        let first_rule = at(&["managers".into(), 0.into(), "rules".into(), 0.into()]);
        assert_eq!(p.line_of(&first_rule, "pipelines.any"), 7);
        // Not in a comment: the whole document's first scalar that is it.
        assert_eq!(p.line_of(&[], "pipelines.any"), 7);
        // Not in another manager's part: this part's first line.
        let first = at(&["managers".into(), 0.into()]);
        assert_eq!(p.line_of(&first, "mailto:a@b"), 3);
        // A default written at the top is found from a rule.
        assert_eq!(p.line_of(&second_rule, "bot@example.org"), 15);
        assert_eq!(p.line_of(&second_rule, "mailto:a@b"), 13);
        assert_eq!(p.line_of(&["xmpp".into()], "jabberid"), 15);
    }

    #[test]
    fn a_part_without_the_value_names_its_first_line() {
        let p = Positions::of(DOC);
        let second = at(&["managers".into(), 1.into()]);
        assert_eq!(p.line_of(&second, "nowhere"), 8);
        assert_eq!(p.line_of(&[], ""), 2);
        assert_eq!(Positions::of("a: [unclosed").line_of(&[], "x"), 1);
    }
}
