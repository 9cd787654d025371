//! Echoing user input in error messages, clipped: a 100 KB selector, name or CIDR in an
//! input must not become a 100 KB error line. Every error that quotes a value from the
//! input formats it through [`clip`] (bare) or [`quoted`] (in backticks).

use std::fmt;

/// The longest echo, in characters. Above the 253 of a Kubernetes name, so that a valid
/// name is always shown whole.
pub const MAX_CHARS: usize = 256;

/// A value from the input, as an error shows it: whole when at most [`MAX_CHARS`]
/// characters; otherwise its first [`MAX_CHARS`] characters, `…` and the total length
/// (`aaaa… (100000 characters)`).
pub fn clip(text: &str) -> Clipped<'_> {
    Clipped {
        text,
        backticks: false,
    }
}

/// Like [`clip`], in backticks; the length of a clipped value stays outside them
/// (`` `aaaa…` (100000 characters) ``).
pub fn quoted(text: &str) -> Clipped<'_> {
    Clipped {
        text,
        backticks: true,
    }
}

/// See [`clip`] and [`quoted`].
#[derive(Debug, Clone, Copy)]
pub struct Clipped<'a> {
    text: &'a str,
    backticks: bool,
}

impl fmt::Display for Clipped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tick = if self.backticks { "`" } else { "" };
        match self.text.char_indices().nth(MAX_CHARS) {
            None => write!(f, "{tick}{}{tick}", self.text),
            Some((cut, _)) => write!(
                f,
                "{tick}{}…{tick} ({} characters)",
                &self.text[..cut],
                self.text.chars().count()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_are_whole() {
        assert_eq!(clip("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(quoted("a == 'b'").to_string(), "`a == 'b'`");
        let name = "n".repeat(253);
        assert_eq!(
            clip(&name).to_string(),
            name,
            "a valid Kubernetes name is never cut"
        );
        let exact = "x".repeat(MAX_CHARS);
        assert_eq!(clip(&exact).to_string(), exact);
    }

    #[test]
    fn long_values_are_cut_with_their_length() {
        let long = "a".repeat(100_000);
        assert_eq!(
            clip(&long).to_string(),
            format!("{}… (100000 characters)", "a".repeat(MAX_CHARS))
        );
        assert_eq!(
            quoted(&long).to_string(),
            format!("`{}…` (100000 characters)", "a".repeat(MAX_CHARS))
        );
    }

    #[test]
    fn cuts_between_characters_and_counts_characters() {
        let long = "é".repeat(MAX_CHARS + 1);
        assert_eq!(
            clip(&long).to_string(),
            format!("{}… ({} characters)", "é".repeat(MAX_CHARS), MAX_CHARS + 1)
        );
    }
}
