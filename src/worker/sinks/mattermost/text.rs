//! A message's text cut into posts under the server's post limit, and the posts' plan:
//! which text and which files each post carries (at most [`FILES_PER_POST`]).

/// The most files one post may carry (the API reference's limit).
pub const FILES_PER_POST: usize = 5;

/// `text` cut into pieces of at most `limit` characters, each ending at a paragraph or a
/// line break, else at a space, where one is found in the second half of the piece; a
/// Markdown code block cut in two is closed and opened again, so both pieces render.
pub fn split(text: &str, limit: usize) -> Vec<String> {
    // Room for the fence a cut code block gets at the end of its first piece ("\n```").
    const FENCE: &str = "\n```";
    let limit = limit.max(16);
    let mut pieces = Vec::new();
    let mut rest = text.trim_end().to_string();
    while rest.chars().count() > limit {
        let room = limit - FENCE.len();
        let hard = byte_index(&rest, room);
        let window = &rest[..hard];
        let half = byte_index(window, room / 2);
        let cut = ["\n\n", "\n", " "]
            .iter()
            .find_map(|sep| window[half..].rfind(sep).map(|i| half + i + sep.len()))
            .unwrap_or(hard);
        let mut piece = rest[..cut].trim_end().to_string();
        let mut next = rest[cut..].trim_start_matches('\n').to_string();
        if open_code_block(&piece) {
            piece.push_str(FENCE);
            next = format!("```\n{next}");
        }
        pieces.push(piece);
        rest = next;
    }
    if !rest.is_empty() || pieces.is_empty() {
        pieces.push(rest);
    }
    pieces
}

/// The byte index of character `n` of `s` (its length when shorter).
fn byte_index(s: &str, n: usize) -> usize {
    s.char_indices().nth(n).map_or(s.len(), |(i, _)| i)
}

/// Whether `text` ends inside a fenced code block (an odd number of ``` lines).
fn open_code_block(text: &str) -> bool {
    text.lines()
        .filter(|l| l.trim_start().starts_with("```"))
        .count()
        % 2
        == 1
}

/// One post of a thread: its text and the indexes of the files it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedPost {
    pub text: String,
    pub files: Vec<usize>,
}

/// The posts for `pieces` of text and `files` files: post `n` carries piece `n` (if any)
/// and files `5n .. 5n+5`; there are as many posts as either needs, at least one.
pub fn plan(pieces: Vec<String>, files: usize) -> Vec<PlannedPost> {
    let posts = pieces.len().max(files.div_ceil(FILES_PER_POST)).max(1);
    let mut pieces = pieces.into_iter();
    (0..posts)
        .map(|n| PlannedPost {
            text: pieces.next().unwrap_or_default(),
            files: (n * FILES_PER_POST..((n + 1) * FILES_PER_POST).min(files)).collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_at_line_breaks_under_the_limit() {
        let line = "0123456789 abcdefghij ".repeat(4) + "\n";
        let text = line.repeat(500);
        let pieces = split(&text, 4000);
        assert!(pieces.len() >= 11, "{}", pieces.len());
        for piece in &pieces {
            assert!(piece.chars().count() <= 4000);
            assert!(piece.ends_with("ghij"), "cut inside a line: {piece:?}");
        }
        // Nothing but the white space at the cuts is lost.
        let squeeze = |s: &str| s.split_whitespace().collect::<String>();
        assert!(squeeze(&pieces.concat()) == squeeze(&text), "text lost");
    }

    #[test]
    fn text_without_breaks_is_cut_hard_and_multibyte_safe() {
        let text = "é".repeat(10_000);
        let pieces = split(&text, 4000);
        assert!(pieces.iter().all(|p| p.chars().count() <= 4000));
        assert_eq!(pieces.concat(), text);
    }

    #[test]
    fn a_cut_code_block_is_closed_and_reopened() {
        let text = format!("intro\n```\n{}```\nafter", "let x = 1;\n".repeat(100));
        let pieces = split(&text, 300);
        assert!(pieces.len() > 2);
        for piece in &pieces {
            assert!(piece.chars().count() <= 300, "{}", piece.chars().count());
            assert!(!open_code_block(piece), "unbalanced: {piece:?}");
        }
    }

    #[test]
    fn short_text_is_one_post_and_files_go_five_per_post() {
        assert_eq!(split("hello", 4000), ["hello"]);
        assert_eq!(split("", 4000), [""]);
        let posts = plan(vec!["hello".into()], 7);
        assert_eq!(posts.len(), 2);
        assert_eq!(posts[0].files, [0, 1, 2, 3, 4]);
        assert_eq!(
            posts[1],
            PlannedPost {
                text: String::new(),
                files: vec![5, 6]
            }
        );
        assert_eq!(plan(vec!["a".into(), "b".into(), "c".into()], 2).len(), 3);
    }
}
