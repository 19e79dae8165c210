//! Text from mail made fit to post in a chat (Mattermost): it may not act as a command.
//!
//! - A mention in mail (`@channel`, `@all`, `@here`, `@<user>`) would notify a whole channel
//!   or a user on the sender's say. Mattermost finds mentions in words it splits more than
//!   once (`x.@channel`, `re:@all`, `--@here` all notify), and after it has decoded
//!   character references (`&#64;channel` is `@channel`). So a zero-width space goes after
//!   every `@` that a name follows, unless a letter, digit or `_` comes before it (an
//!   address: `ops@example.com`), and after every `&` that could begin a character
//!   reference; the text reads the same and notifies nobody. A backslash would not do:
//!   `\@channel` still notifies.
//! - An image in mail (`![alt](url)`, as HTML mail's `<img>` becomes in Markdown) would be
//!   loaded from its server by every reader's client: it becomes a link.
//! - Code (fenced blocks and inline spans) is left as it is: Mattermost finds no mention and
//!   shows no image there, and pasted code must stay exact.

/// What comes between `@` and a name so that the name mentions nobody.
const ZERO_WIDTH_SPACE: char = '\u{200B}';

/// `text` with its mentions quieted and its images turned into links, its code untouched.
pub fn quiet(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let mut fence: Option<String> = None;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let marker: String = trimmed
            .chars()
            .take_while(|&c| c == '`' || c == '~')
            .collect();
        match &fence {
            // The fence's own closing line ends the block.
            Some(open) if marker.starts_with(open.as_str()) => {
                fence = None;
                out.push_str(line);
            }
            Some(_) => out.push_str(line),
            None if marker.len() >= 3
                && marker.chars().all(|c| c == marker.as_bytes()[0] as char) =>
            {
                fence = Some(marker);
                out.push_str(line);
            }
            None => quiet_line(line, &mut out),
        }
    }
    out
}

/// One line outside fenced code, its inline code spans left as they are.
fn quiet_line(line: &str, out: &mut String) {
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '`' {
            // An inline code span: a run of backticks up to the same run.
            let run = chars[i..].iter().take_while(|&&b| b == '`').count();
            let close = (i + run..chars.len()).find(|&j| {
                chars[j..].iter().take_while(|&&b| b == '`').count() == run
                    && (j == 0 || chars[j - 1] != '`')
            });
            if let Some(end) = close {
                out.extend(&chars[i..end + run]);
                i = end + run;
                continue;
            }
        }
        let previous = i.checked_sub(1).map(|p| chars[p]);
        let next = chars.get(i + 1).copied();
        match c {
            // `![` opens an image: the link without the `!`.
            '!' if next == Some('[') => {}
            '@' if !previous.is_some_and(is_name_char) && next.is_some_and(is_mention_start) => {
                out.push('@');
                out.push(ZERO_WIDTH_SPACE);
            }
            '&' if next.is_some_and(|n| n == '#' || n.is_ascii_alphabetic()) => {
                out.push('&');
                out.push(ZERO_WIDTH_SPACE);
            }
            _ => out.push(c),
        }
        i += 1;
    }
}

/// A character of an address's local part right before its `@`.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
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
        // Words Mattermost splits again, and a doubled @.
        assert_eq!(
            quiet("x.@channel re:@all --@here @@channel"),
            format!("x.@{Z}channel re:@{Z}all --@{Z}here @{Z}@{Z}channel")
        );
        // Character references that decode to @.
        assert_eq!(
            quiet("&#64;channel &commat;here a & b"),
            format!("&{Z}#64;channel &{Z}commat;here a & b")
        );
    }

    #[test]
    fn images_become_links_and_code_stays_exact() {
        assert_eq!(
            quiet("see ![graph](https://tracker.example/p.png) now!"),
            "see [graph](https://tracker.example/p.png) now!"
        );
        assert_eq!(
            quiet("run `npm i @scope/x` then\n```\n@Override vec![1]\n```\n@all"),
            format!("run `npm i @scope/x` then\n```\n@Override vec![1]\n```\n@{Z}all")
        );
    }
}
