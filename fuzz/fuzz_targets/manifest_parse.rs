//! `imdsguard_core::manifest::parse` on arbitrary text (YAML or JSON, told from the
//! content). Properties: it never panics; every error and every object names the file
//! it was given and a line inside the input; every error says what was wrong.
#![no_main]

use imdsguard_core::calico::CalicoObject;
use imdsguard_core::manifest::parse;
use imdsguard_core::model::Object;
use imdsguard_fuzz::line_count;
use libfuzzer_sys::fuzz_target;

const FILE: &str = "fuzz.yaml";

fuzz_target!(|data: &[u8]| {
    // The CLI reads files as UTF-8 and reports anything else as an IO error before
    // parsing; `parse` itself takes text.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = line_count(text);
    let loaded = parse(FILE, text);
    for e in &loaded.errors {
        assert_eq!(&*e.file, FILE, "{e}");
        assert!(
            (1..=lines).contains(&e.line),
            "error line {} outside the input's {lines} lines: {e}",
            e.line
        );
        assert!(!e.message.is_empty(), "an error without a message: {e:?}");
        let _ = e.to_string();
    }
    for o in &loaded.objects {
        let source = match o {
            Object::Namespace(x) => &x.source,
            Object::Pod(x) => &x.source,
            Object::Controller(x) => &x.source,
            Object::NetworkPolicy(x) => &x.source,
            Object::Tiered(x) => &x.source,
            Object::Node(x) => &x.source,
            Object::Cilium(x) => &x.source,
            Object::CiliumCidrGroup(x) => &x.source,
            Object::Calico(CalicoObject::Policy(x)) => &x.source,
            Object::Calico(CalicoObject::NetworkSet(x)) => &x.source,
            Object::Calico(CalicoObject::Tier(x)) => {
                x.source.as_ref().expect("a Tier read has a source")
            }
        };
        assert_eq!(&*source.file, FILE);
        assert!(
            (1..=lines).contains(&source.line),
            "object line {} outside the input's {lines} lines",
            source.line
        );
    }
});
