//! Shared input decoding for the fuzz targets.
//!
//! The request targets (`canon_request`, `imds_validate`) read their input as a small
//! HTTP-like text, so that the seed corpus is readable and libFuzzer's mutations stay
//! close to real requests:
//!
//! ```text
//! GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net
//! Metadata: true
//! ```
//!
//! The first line is `METHOD target` (a line without a space is a `GET` of that
//! target); every further line is a header `Name: value` (a line without `:` is a name
//! with an empty value); an empty line ends the headers. Header values are raw bytes; the method, target and names must
//! be UTF-8 (they are `&str` in the APIs under test), otherwise the input is skipped.

/// One decoded request.
#[derive(Debug)]
pub struct Request<'a> {
    /// The method, as sent.
    pub method: &'a str,
    /// The raw request target (origin-form or absolute-form).
    pub target: &'a str,
    /// Header fields in order: name, raw value.
    pub headers: Vec<(&'a str, &'a [u8])>,
}

impl<'a> Request<'a> {
    /// Decodes `data`; `None` when the request line or a header name is not UTF-8.
    pub fn decode(data: &'a [u8]) -> Option<Request<'a>> {
        let mut lines = data.split(|&b| b == b'\n').map(strip_cr);
        let first = std::str::from_utf8(lines.next()?).ok()?;
        let (method, target) = first.split_once(' ').unwrap_or(("GET", first));
        let mut headers = Vec::new();
        for line in lines {
            if line.is_empty() {
                break; // the end of the header section
            }
            let (name, value) = match line.iter().position(|&b| b == b':') {
                Some(i) => (&line[..i], trim_ows(&line[i + 1..])),
                None => (line, &line[line.len()..]),
            };
            headers.push((std::str::from_utf8(name).ok()?, value));
        }
        Some(Request {
            method,
            target,
            headers,
        })
    }

    /// The path and the query (without `?`) of an origin-form target, as a server
    /// splits them for IMDS (`None` for any other form).
    pub fn origin_path_query(&self) -> Option<(&'a str, Option<&'a str>)> {
        if !self.target.starts_with('/') {
            return None;
        }
        Some(match self.target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (self.target, None),
        })
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Optional whitespace around a header value (RFC 9110), as hyper removes it.
fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |i| i + 1);
    &v[start..end]
}

/// The number of lines an editor shows for `text` (a final newline opens an empty last
/// line): the largest line number an error may name.
pub fn line_count(text: &str) -> usize {
    text.bytes().filter(|&b| b == b'\n').count() + 1
}

/// The properties every accepted set of access rules has, whichever reader accepted it
/// (`AccessRules::parse` of a rules file, `AccessRules::from_value` of a
/// `MetadataAccessPolicy` spec): unique, unreserved, non-empty names; subjects, methods
/// and paths; a token section exactly when the rule grants the token endpoint.
pub fn check_accepted_rules(rules: &imdsguard_core::access::AccessRules) {
    use imdsguard_core::access::RESERVED_RULE_NAMES;
    use imdsguard_core::imds::ImdsApi;
    assert_eq!(rules.len(), rules.rules().len());
    for (i, rule) in rules.rules().iter().enumerate() {
        assert!(!rule.name.is_empty());
        assert!(
            !RESERVED_RULE_NAMES.contains(&&*rule.name),
            "reserved name {}",
            rule.name
        );
        assert!(
            rules.rules()[..i].iter().all(|o| o.name != rule.name),
            "name {} used twice",
            rule.name
        );
        assert!(!rule.subjects.is_empty(), "{rule:?}");
        assert!(
            !rule.methods.is_empty() && !rule.paths.is_empty(),
            "{rule:?}"
        );
        let token_path = rule
            .paths
            .iter()
            .any(|g| g.covers(ImdsApi::IdentityToken, &[]));
        assert_eq!(rule.token.is_some(), token_path, "{rule:?}");
    }
}
