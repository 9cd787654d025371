//! `imdsguard_core::calico::selector::Selector::parse` (Calico's selector language, from
//! untrusted manifests) on arbitrary text, and the selectors it accepts evaluated. Input:
//! the first line is the selector; each further line `key=value` is a label of the
//! labels it is evaluated against (also evaluated against no labels). Properties: it
//! never panics (nesting is bounded); a rejection names a column inside the input (1 to
//! its length in characters + 1) and what was expected; an accepted selector keeps its
//! text and parses again to the same selector; `!(s)` is the negation of `s`,
//! `(s) && all()` and `(s) || !all()` are `s`, in every scope; blank is `all()`.
#![no_main]

use imdsguard_core::calico::selector::{MAX_DEPTH, Scope, Selector};
use imdsguard_core::model::Labels;
use libfuzzer_sys::fuzz_target;

const SCOPES: [Scope; 5] = [
    Scope::Plain,
    Scope::Namespace { namespaced: true },
    Scope::Namespace { namespaced: false },
    Scope::ServiceAccount {
        has_service_account: true,
    },
    Scope::ServiceAccount {
        has_service_account: false,
    },
];

/// The deepest parenthesis nesting, counted the way the parser does (outside strings).
fn depth(text: &str) -> usize {
    let (mut d, mut max, mut quote) = (0usize, 0usize, None);
    for c in text.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(') => {
                d += 1;
                max = max.max(d);
            }
            (None, ')') => d = d.saturating_sub(1),
            _ => {}
        }
    }
    max
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The whole input as one selector: never panics, errors stay inside it.
    if let Err(e) = Selector::parse(text) {
        assert!(e.column >= 1 && e.column <= text.chars().count() + 1, "{e}");
    }
    let (sel_text, rest) = text.split_once('\n').unwrap_or((text, ""));
    let mut labels = Labels::new();
    for line in rest.lines() {
        let (k, v) = line.split_once('=').unwrap_or((line, ""));
        labels.insert(k.to_string(), v.to_string());
    }
    let sel = match Selector::parse(sel_text) {
        Ok(s) => s,
        Err(e) => {
            assert!(
                e.column >= 1 && e.column <= sel_text.chars().count() + 1,
                "{sel_text:?}: {e}"
            );
            assert!(!e.expected.is_empty() && !e.found.is_empty(), "{e:?}");
            return;
        }
    };
    assert_eq!(sel.as_str(), sel_text);
    assert_eq!(Selector::parse(sel.as_str()).as_ref(), Ok(&sel));
    let empty = Labels::new();
    let blank = sel_text.trim_matches([' ', '\t']).is_empty();
    if blank {
        assert!(sel.is_all());
    }
    let nested_ok = !blank && depth(sel_text) < MAX_DEPTH;
    let wrap = |f: &str| {
        let s = f.replace("{}", sel_text);
        Selector::parse(&s).unwrap_or_else(|e| panic!("{s:?} does not parse: {e}"))
    };
    for l in [&empty, &labels] {
        for scope in SCOPES {
            let m = sel.matches_in(l, scope);
            if nested_ok {
                assert_eq!(
                    wrap("!({})").matches_in(l, scope),
                    !m,
                    "{sel_text:?} {scope:?}"
                );
                assert_eq!(
                    wrap("({}) && all()").matches_in(l, scope),
                    m && Selector::all().matches_in(l, scope)
                );
                assert_eq!(
                    wrap("({}) || !all()").matches_in(l, scope),
                    m || !Selector::all().matches_in(l, scope)
                );
            }
        }
    }
});
