//! User text on its way to a log line or a terminal: control characters (newlines that would
//! forge log lines, ESC sequences that drive a terminal) and invisible direction overrides are
//! written as escapes, and long text is cut, so what a peer sent can neither fake output nor
//! flood it.

use std::fmt;

/// Characters of user text shown at most in a log field.
pub const LOG_TEXT_CHARS: usize = 128;

/// `text` as it may be shown: [`escape`]d and cut after `max_chars` characters (with the number
/// of bytes left out).
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a> {
    text: &'a str,
    max_chars: usize,
}

/// `text` escaped and cut to [`LOG_TEXT_CHARS`], for a log field.
pub fn log(text: &str) -> Escaped<'_> {
    Escaped {
        text,
        max_chars: LOG_TEXT_CHARS,
    }
}

/// `text` escaped in full, for a terminal or a table.
pub fn escape(text: &str) -> Escaped<'_> {
    Escaped {
        text,
        max_chars: usize::MAX,
    }
}

/// Whether `c` must not reach a log or a terminal as it is.
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        for (n, (i, c)) in self.text.char_indices().enumerate() {
            if n == self.max_chars {
                return write!(f, "…(+{} bytes)", self.text.len() - i);
            }
            if c == '\\' {
                f.write_str("\\\\")?;
            } else if unsafe_char(c) {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_long_text_cut() {
        let forged = "bob\nINFO login ok account=admin\x1b[2J\r\t\u{202e}x\\";
        let shown = escape(forged).to_string();
        assert_eq!(
            shown,
            "bob\\nINFO login ok account=admin\\u{1b}[2J\\r\\t\\u{202e}x\\\\"
        );
        assert!(!shown.chars().any(unsafe_char));
        assert_eq!(escape("élan 日本").to_string(), "élan 日本");
        let long = "a".repeat(1_000_000);
        let cut = log(&long).to_string();
        assert_eq!(
            cut,
            format!("{}…(+{} bytes)", "a".repeat(128), 1_000_000 - 128)
        );
    }
}
