//! Text from mail made fit to post in a chat (Mattermost): it may not act as a command.
//!
//! - A mention in mail (`@channel`, `@all`, `@here`, `@<user>`) would notify a whole channel
//!   or a user on the sender's say: a zero-width space after the `@` keeps it as it reads
//!   and notifies nobody (Mattermost's mention parser splits words at it; a backslash does
//!   not stop a mention). An `@` inside a word (an address) is left alone.
//! - An image in mail (`![alt](url)`, as HTML mail's `<img>` becomes in Markdown) would be
//!   loaded from its server by every reader's client: it becomes a link.

/// What comes between `@` and a name so that the name mentions nobody.
const ZERO_WIDTH_SPACE: char = '\u{200B}';

/// `text` with its mentions quieted and its images turned into links.
pub fn quiet(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let mut previous: Option<char> = None;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            // `![` opens an image: the link without the `!`.
            '!' if chars.peek() == Some(&'[') => {}
            '@' if !previous.is_some_and(is_word) && chars.peek().is_some_and(|&n| is_word(n)) => {
                out.push('@');
                out.push(ZERO_WIDTH_SPACE);
            }
            _ => out.push(c),
        }
        previous = Some(c);
    }
    out
}

/// A character Mattermost's mention parser keeps inside a word.
fn is_word(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '@')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_notify_nobody_and_addresses_stay() {
        assert_eq!(
            quiet("@channel disk full, ask @here or @bob.smith (alice@example.com)"),
            "@\u{200B}channel disk full, ask @\u{200B}here or @\u{200B}bob.smith (alice@example.com)"
        );
        assert_eq!(quiet("(@all) a @ b @"), "(@\u{200B}all) a @ b @");
    }

    #[test]
    fn images_become_links() {
        assert_eq!(
            quiet("see ![graph](https://tracker.example/p.png) now!"),
            "see [graph](https://tracker.example/p.png) now!"
        );
        assert_eq!(quiet("wow![x][1]"), "wow[x][1]");
    }
}
