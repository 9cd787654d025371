//! A linear pre-scan of a YAML document for the nesting depth of flow collections
//! (`[...]`, `{...}`).
//!
//! libyaml (under serde_norway) spends time proportional to the current flow depth on
//! every token, so a document of `d` nested `[` takes time quadratic in `d` (40,000 levels:
//! 10 s) before serde's recursion limit rejects it. This scanner follows libyaml's
//! tokenizer closely enough to compute the same flow level (quoted, plain and block
//! scalars, comments, anchors and tags, block indentation and simple keys), without
//! building tokens, in one pass over the bytes. A document deeper than
//! [`MAX_FLOW_DEPTH`] is refused before it reaches the parser.
//!
//! Where the scanner and libyaml could disagree (documents libyaml rejects anyway), the
//! scanner keeps counting rather than stopping, so it never sees less depth than libyaml
//! does on the text libyaml accepts.

/// Flow collections nested deeper than this are refused (serde_norway refuses more than
/// 128 levels in the fields it reads, too).
pub(super) const MAX_FLOW_DEPTH: usize = 128;

/// Where a document first goes deeper than [`MAX_FLOW_DEPTH`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TooDeep {
    /// 0-based line within the scanned text, counting `\n` only (as the reader's
    /// other errors do).
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
}

/// The first place where flow collections nest deeper than `limit`, if any.
pub(super) fn flow_too_deep(text: &str, limit: usize) -> Option<TooDeep> {
    // Fast path: the depth cannot exceed the number of opening brackets.
    let opening = memchr::memchr2_iter(b'[', b'{', text.as_bytes())
        .take(limit + 1)
        .count();
    if opening <= limit {
        return None;
    }
    Scanner::new(text.as_bytes()).run(limit)
}

/// The simple-key candidate of the block context (libyaml's bottom `simple_keys` slot):
/// where a token that may turn out to be a mapping key started.
#[derive(Clone, Copy)]
struct SimpleKey {
    line: usize,
    index: usize,
    column: i64,
}

struct Scanner<'a> {
    b: &'a [u8],
    /// Byte offset.
    i: usize,
    /// Characters consumed (libyaml's `mark.index`).
    index: usize,
    line: usize,
    /// Characters since the start of the line.
    column: i64,
    flow: usize,
    /// libyaml's `parser->indent` (block collections' column; -1 at the top).
    indent: i64,
    indents: Vec<i64>,
    simple_key_allowed: bool,
    key: Option<SimpleKey>,
}

impl<'a> Scanner<'a> {
    fn new(b: &'a [u8]) -> Self {
        Scanner {
            b,
            i: 0,
            index: 0,
            line: 0,
            column: 0,
            flow: 0,
            indent: -1,
            indents: Vec::new(),
            simple_key_allowed: true,
            key: None,
        }
    }

    fn at(&self, k: usize) -> u8 {
        self.b.get(self.i + k).copied().unwrap_or(0)
    }

    /// Length of the line break at offset `i + k` (0 when none): `\r\n`, `\r`, `\n`,
    /// and the Unicode NEL, LS and PS that libyaml also counts as breaks.
    fn break_len(&self, k: usize) -> usize {
        match (self.at(k), self.at(k + 1), self.at(k + 2)) {
            (b'\r', b'\n', _) => 2,
            (b'\r' | b'\n', _, _) => 1,
            (0xC2, 0x85, _) => 2,
            (0xE2, 0x80, 0xA8 | 0xA9) => 3,
            _ => 0,
        }
    }

    fn is_break(&self, k: usize) -> bool {
        self.break_len(k) > 0
    }

    fn is_blank(&self, k: usize) -> bool {
        matches!(self.at(k), b' ' | b'\t')
    }

    /// Blank, break or end of input.
    fn is_blankz(&self, k: usize) -> bool {
        self.is_blank(k) || self.is_break(k) || self.i + k >= self.b.len()
    }

    fn eof(&self) -> bool {
        self.i >= self.b.len()
    }

    /// Consumes one character (a line break counts as one and starts a new line).
    fn skip(&mut self) {
        let n = self.break_len(0);
        if n > 0 {
            self.i += n;
            self.index += 1;
            self.line += 1;
            self.column = 0;
            return;
        }
        if self.eof() {
            return;
        }
        self.i += 1;
        while self.i < self.b.len() && (self.b[self.i] & 0xC0) == 0x80 {
            self.i += 1;
        }
        self.index += 1;
        self.column += 1;
    }

    fn run(mut self, limit: usize) -> Option<TooDeep> {
        loop {
            self.skip_to_next_token();
            if self.eof() {
                return None;
            }
            // Stale simple key: a key must sit on one line, within 1024 characters.
            if let Some(k) = self.key
                && (k.line < self.line || k.index + 1024 < self.index)
            {
                self.key = None;
            }
            self.unroll_indent(self.column);
            let c = self.at(0);
            if self.column == 0 && c == b'%' {
                while !self.eof() && !self.is_break(0) {
                    self.skip();
                }
                continue;
            }
            if self.column == 0
                && ((c == b'-' && self.at(1) == b'-' && self.at(2) == b'-')
                    || (c == b'.' && self.at(1) == b'.' && self.at(2) == b'.'))
                && self.is_blankz(3)
            {
                self.unroll_indent(-1);
                self.key = None;
                self.simple_key_allowed = false;
                for _ in 0..3 {
                    self.skip();
                }
                continue;
            }
            match c {
                b'[' | b'{' => {
                    self.save_key();
                    self.flow += 1;
                    if self.flow > limit {
                        // Lines as the rest of the manifest reader counts them (`\n`
                        // only), not libyaml's (which also breaks at a lone `\r`, NEL, LS
                        // and PS), so that the error points where every other error does.
                        let before = &self.b[..self.i];
                        let line = memchr::memchr_iter(b'\n', before).count();
                        let start = memchr::memrchr(b'\n', before).map_or(0, |n| n + 1);
                        let column = before[start..]
                            .iter()
                            .filter(|&&b| (b & 0xC0) != 0x80)
                            .count();
                        return Some(TooDeep {
                            line,
                            column: column + 1,
                        });
                    }
                    self.simple_key_allowed = true;
                    self.skip();
                }
                b']' | b'}' => {
                    if self.flow == 0 {
                        self.key = None;
                    }
                    self.flow = self.flow.saturating_sub(1);
                    self.simple_key_allowed = false;
                    self.skip();
                }
                b',' => {
                    self.remove_key();
                    self.simple_key_allowed = true;
                    self.skip();
                }
                b'-' if self.is_blankz(1) => {
                    if self.flow == 0 {
                        self.roll_indent(self.column);
                    }
                    self.remove_key();
                    self.simple_key_allowed = true;
                    self.skip();
                }
                b'?' if self.flow > 0 || self.is_blankz(1) => {
                    if self.flow == 0 {
                        self.roll_indent(self.column);
                    }
                    self.remove_key();
                    self.simple_key_allowed = self.flow == 0;
                    self.skip();
                }
                b':' if self.flow > 0 || self.is_blankz(1) => {
                    match self.key.take().filter(|_| self.flow == 0) {
                        Some(k) => {
                            self.roll_indent(k.column);
                            self.simple_key_allowed = false;
                        }
                        None => {
                            if self.flow == 0 {
                                self.roll_indent(self.column);
                            }
                            self.simple_key_allowed = self.flow == 0;
                        }
                    }
                    self.skip();
                }
                b'*' | b'&' => {
                    self.save_key();
                    self.simple_key_allowed = false;
                    self.skip();
                    while self.at(0).is_ascii_alphanumeric() || matches!(self.at(0), b'_' | b'-') {
                        self.skip();
                    }
                }
                b'!' => {
                    self.save_key();
                    self.simple_key_allowed = false;
                    self.tag();
                }
                b'|' | b'>' if self.flow == 0 => {
                    self.remove_key();
                    self.simple_key_allowed = true;
                    self.block_scalar();
                }
                b'\'' | b'"' => {
                    self.save_key();
                    self.simple_key_allowed = false;
                    self.quoted(c);
                }
                _ => {
                    self.save_key();
                    self.simple_key_allowed = false;
                    self.plain();
                }
            }
        }
    }

    /// libyaml's `scan_skip_to_next_token`: blanks, comments and line breaks.
    fn skip_to_next_token(&mut self) {
        loop {
            if self.column == 0 && self.b[self.i..].starts_with("\u{feff}".as_bytes()) {
                self.skip();
            }
            while self.at(0) == b' '
                || ((self.flow > 0 || !self.simple_key_allowed) && self.at(0) == b'\t')
            {
                self.skip();
            }
            if self.at(0) == b'#' {
                while !self.eof() && !self.is_break(0) {
                    self.skip();
                }
            }
            if !self.is_break(0) {
                return;
            }
            self.skip();
            if self.flow == 0 {
                self.simple_key_allowed = true;
            }
        }
    }

    fn save_key(&mut self) {
        if self.simple_key_allowed && self.flow == 0 {
            self.key = Some(SimpleKey {
                line: self.line,
                index: self.index,
                column: self.column,
            });
        }
    }

    fn remove_key(&mut self) {
        if self.flow == 0 {
            self.key = None;
        }
    }

    fn roll_indent(&mut self, column: i64) {
        if self.indent < column {
            self.indents.push(self.indent);
            self.indent = column;
        }
    }

    fn unroll_indent(&mut self, column: i64) {
        if self.flow > 0 {
            return;
        }
        while self.indent > column {
            self.indent = self.indents.pop().unwrap_or(-1);
        }
    }

    fn tag(&mut self) {
        let verbatim = self.at(1) == b'<';
        self.skip();
        if verbatim {
            self.skip();
        }
        while self.at(0).is_ascii_alphanumeric()
            || b"-_;/?:@&=+$.%!~*'()".contains(&self.at(0))
            || (verbatim && matches!(self.at(0), b',' | b'[' | b']'))
        {
            self.skip();
        }
        if verbatim && self.at(0) == b'>' {
            self.skip();
        }
    }

    fn quoted(&mut self, quote: u8) {
        self.skip();
        while !self.eof() {
            let c = self.at(0);
            if quote == b'\'' && c == b'\'' && self.at(1) == b'\'' {
                self.skip();
                self.skip();
            } else if c == quote {
                self.skip();
                return;
            } else if quote == b'"' && c == b'\\' {
                self.skip();
                self.skip();
            } else {
                self.skip();
            }
        }
    }

    /// libyaml's `scan_plain_scalar`: ends at `: `, ` #`, a flow indicator inside flow
    /// collections, or a line indented no more than the block it is in.
    fn plain(&mut self) {
        let indent = self.indent + 1;
        let mut leading_blanks = false;
        let mut first = true;
        loop {
            if self.column == 0
                && ((self.at(0) == b'-' && self.at(1) == b'-' && self.at(2) == b'-')
                    || (self.at(0) == b'.' && self.at(1) == b'.' && self.at(2) == b'.'))
                && self.is_blankz(3)
            {
                break;
            }
            if self.at(0) == b'#' && !first {
                break;
            }
            while !self.is_blankz(0) {
                let c = self.at(0);
                let ends = (c == b':' && self.is_blankz(1))
                    || (self.flow > 0 && matches!(c, b',' | b'[' | b']' | b'{' | b'}'));
                if ends && !first {
                    break;
                }
                // libyaml rejects a `:` before a flow indicator inside flow collections
                // (and other bad first characters); go on as if it were text.
                first = false;
                self.skip();
            }
            first = false;
            if !(self.is_blank(0) || self.is_break(0)) {
                break;
            }
            while self.is_blank(0) || self.is_break(0) {
                if self.is_break(0) {
                    leading_blanks = true;
                }
                self.skip();
            }
            if self.flow == 0 && self.column < indent {
                break;
            }
        }
        if leading_blanks {
            self.simple_key_allowed = true;
        }
    }

    /// libyaml's `scan_block_scalar`: the header line, then every line indented at least
    /// as much as the content (given by the indicator or by the first non-empty line).
    fn block_scalar(&mut self) {
        self.skip();
        let mut increment = 0i64;
        for _ in 0..2 {
            match self.at(0) {
                b'+' | b'-' => self.skip(),
                c @ b'1'..=b'9' => {
                    increment = i64::from(c - b'0');
                    self.skip();
                }
                _ => {}
            }
        }
        // The rest of the header line (blanks, a comment; anything else is an error
        // libyaml reports).
        while !self.eof() && !self.is_break(0) {
            self.skip();
        }
        if self.eof() {
            return;
        }
        self.skip();
        let mut indent = if increment > 0 {
            if self.indent >= 0 {
                self.indent + increment
            } else {
                increment
            }
        } else {
            0
        };
        self.block_breaks(&mut indent);
        while self.column == indent && !self.eof() {
            while !self.eof() && !self.is_break(0) {
                self.skip();
            }
            if self.eof() {
                return;
            }
            self.skip();
            self.block_breaks(&mut indent);
        }
    }

    fn block_breaks(&mut self, indent: &mut i64) {
        let mut max_indent = 0;
        loop {
            while (*indent == 0 || self.column < *indent) && self.at(0) == b' ' {
                self.skip();
            }
            max_indent = max_indent.max(self.column);
            if !self.is_break(0) {
                break;
            }
            self.skip();
        }
        if *indent == 0 {
            *indent = max_indent.max(self.indent + 1).max(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth_over(text: &str, limit: usize) -> Option<(usize, usize)> {
        flow_too_deep(text, limit).map(|d| (d.line, d.column))
    }

    fn nested(d: usize) -> String {
        format!("a: {}{}\n", "[".repeat(d), "]".repeat(d))
    }

    #[test]
    fn counts_flow_nesting_with_line_and_column() {
        assert_eq!(depth_over(&nested(3), 3), None);
        assert_eq!(depth_over(&nested(4), 3), Some((0, 7)));
        assert_eq!(depth_over("x: 1\ny: {a: [{b: [c]}]}\n", 3), Some((1, 13)));
        assert_eq!(depth_over("x: 1\ny: {a: [{b: c}]}\n", 3), None);
        // A lone `\r` (a line break to libyaml) does not start a line of the report:
        // the reader's other errors count `\n` only (found by the manifest_parse fuzz
        // target: an error line past the input's last line).
        assert_eq!(depth_over("x: 1\r\ry: {a: [{b: [c]}]}\n", 3), Some((0, 19)));
        assert_eq!(depth_over("x: é\ny: {a: [{b: [c]}]}\n", 3), Some((1, 13)));
        // Multi-line flow collections keep their depth across lines.
        assert_eq!(depth_over("a: [\n  [\n   [\n    [x]]]]\n", 3), Some((3, 5)));
    }

    #[test]
    fn brackets_in_scalars_and_comments_do_not_count() {
        let text = concat!(
            "a: '[[[[''[[[['\n",
            "b: \"[[[[\\\"[[[[\"\n",
            "c: x[[[[ [[[[\n",
            "d: x\n  [[[[ [[[[\n",
            "# [[[[[[[[\n",
            "e: 1 # [[[[[[\n",
            "f: |\n  [[[[\n   [[[[\n\n  {{{{\n",
            "g: >-\n    [[[[\n    {{{{\n",
            "h: &anchor !tag x[[[[\n",
            "j:\n- - |2\n     [[[[[[\n",
        );
        assert_eq!(depth_over(text, 1), None, "scalars hold no structure");
    }

    #[test]
    fn structure_after_scalars_still_counts() {
        // A quote inside a plain scalar does not open a quoted scalar.
        assert_eq!(depth_over("a: don't\nb: [[x]]\nc: '\n", 1), Some((1, 5)));
        // The block scalar ends at the first line indented like its key.
        assert_eq!(depth_over("a: |\n  text\nb: [[x]]\n", 1), Some((2, 5)));
        // A plain scalar ends at a line indented like its mapping (here a new key).
        assert_eq!(depth_over("- a: x\n  'b': [[x]]\n", 1), Some((1, 9)));
        // A flow collection at the start of a line is structure.
        assert_eq!(depth_over("a:\n  [[x]]\n", 1), Some((1, 4)));
    }

    #[test]
    fn linear_on_deep_input() {
        let d = 200_000;
        let text = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: x, labels: {}{}}}\n",
            "[".repeat(d),
            "]".repeat(d)
        );
        assert_eq!(
            depth_over(&text, MAX_FLOW_DEPTH),
            Some((2, 28 + MAX_FLOW_DEPTH))
        );
    }
}
