//! Text from mail made fit to post in a chat (Mattermost): it may not act as a command.
//!
//! - A mention in mail (`@channel`, `@all`, `@here`, `@<user>`) would notify a whole channel
//!   or a user on the sender's say. Mattermost finds mentions in words it splits more than
//!   once and trims (`x.@channel`, `re:@all`, `_@here_`, `@@channel` all notify), and after
//!   it has decoded character references (`&#64;channel` is `@channel`). So a zero-width
//!   space goes after every `@` that a name follows, unless an ASCII letter or digit comes
//!   before it (an address: `ops@example.com`), and after every `&` that begins `&#` or
//!   `&commat;`; the text reads the same and notifies nobody. A backslash would not do:
//!   `\@channel` still notifies. Code is quieted too: where a block or span ends is the
//!   server's reading of the whole post, and a zero-width space there is invisible.
//! - An image in mail (`![alt](url)`, as HTML mail's `<img>` becomes in Markdown) would be
//!   loaded from its server by every reader's client: a zero-width space between `!` and
//!   `[` makes it a link (and `vec![1]` still reads the same).

/// What comes between `@` and a name so that the name mentions nobody.
const ZERO_WIDTH_SPACE: char = '\u{200B}';

/// `text` with its mentions quieted and its images turned into links.
pub fn quiet(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len() + 8);
    for (i, &c) in chars.iter().enumerate() {
        let previous = i.checked_sub(1).map(|p| chars[p]);
        let next = chars.get(i + 1).copied();
        out.push(c);
        let quieted = match c {
            '!' => next == Some('['),
            '@' => {
                !previous.is_some_and(|p| p.is_ascii_alphanumeric())
                    && next.is_some_and(is_mention_start)
            }
            '&' => {
                next == Some('#')
                    || chars[i + 1..]
                        .iter()
                        .take(7)
                        .collect::<String>()
                        .eq_ignore_ascii_case("commat;")
            }
            _ => false,
        };
        if quieted {
            out.push(ZERO_WIDTH_SPACE);
        }
    }
    out
}

/// A character a mention's name may begin with (what Mattermost keeps in a word, `@`
/// included: `@@channel` splits to `@channel`).
fn is_mention_start(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '@')
}

#[cfg(test)]
mod tests {
    use super::*;

    const Z: &str = "\u{200B}";

    #[test]
    fn mentions_notify_nobody_and_addresses_stay() {
        assert_eq!(
            quiet("@channel disk full, ask @here or @bob.smith (alice@example.com)"),
            format!("@{Z}channel disk full, ask @{Z}here or @{Z}bob.smith (alice@example.com)")
        );
        assert_eq!(quiet("(@all) a @ b @"), format!("(@{Z}all) a @ b @"));
        // Words Mattermost splits again or trims, and a doubled @.
        assert_eq!(
            quiet("x.@channel re:@all --@here _@here_ @@channel"),
            format!("x.@{Z}channel re:@{Z}all --@{Z}here _@{Z}here_ @{Z}@{Z}channel")
        );
        // Character references that decode to @; a link's query stays as it is.
        assert_eq!(
            quiet("&#64;channel &#x40;all &COMMAT;here ?a=1&from=now AT&T"),
            format!("&{Z}#64;channel &{Z}#x40;all &{Z}COMMAT;here ?a=1&from=now AT&T")
        );
        // In code too: where code ends is the server's reading of the whole post.
        assert_eq!(
            quiet("~~~ @channel\n`a``@all`"),
            format!("~~~ @{Z}channel\n`a``@{Z}all`")
        );
    }

    #[test]
    fn images_become_links() {
        assert_eq!(
            quiet("see ![graph](https://tracker.example/p.png) now!"),
            format!("see !{Z}[graph](https://tracker.example/p.png) now!")
        );
        assert_eq!(quiet("vec![1]"), format!("vec!{Z}[1]"));
    }
}
