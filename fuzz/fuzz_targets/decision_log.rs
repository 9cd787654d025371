//! `imdsguard_core::decisions::DecisionLog` (what `imdsguard report` reads: the proxy's
//! decision logs and the agent's drop records) on arbitrary bytes. The first byte
//! chooses the size of the chunks the rest is fed in (0: all at once). Properties: it
//! never panics; every line is counted exactly once, as a decision record, a drop
//! record, a skipped line or a malformed one, and the lines are those of the input; the
//! decisions add up (totals, per workload, per request), and so do the drops (totals,
//! per workload, packets); malformed lines are kept in order with line numbers inside
//! the input; the report does not depend on how the input was cut into chunks.
#![no_main]

use imdsguard_core::decisions::{DecisionLog, MAX_MALFORMED_KEPT};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, text)) = data.split_first() else {
        return;
    };
    let mut whole = DecisionLog::new();
    whole.read("whole", text);
    let r = whole.report();

    let mut chunked = DecisionLog::new();
    chunked.begin("whole");
    for c in text.chunks(usize::from(chunk).max(1)) {
        chunked.feed(c);
    }
    chunked.end();
    assert_eq!(chunked.report(), r, "chunks of {chunk}");

    // Every line counted once.
    let newlines = text.iter().filter(|b| **b == b'\n').count() as u64;
    let tail = text
        .rsplit(|b| *b == b'\n')
        .next()
        .is_some_and(|t| !t.is_empty());
    let l = r.lines;
    assert_eq!(l.read, newlines + u64::from(tail));
    assert_eq!(
        l.read,
        l.decisions + l.drops + l.skipped + l.malformed,
        "{l:?}"
    );
    assert!(l.text_decisions + l.text_drops <= l.skipped);

    // Decisions add up.
    let t = r.totals;
    assert_eq!(t.records, l.decisions);
    assert_eq!(
        t.records,
        t.allow + t.would_deny + t.deny + t.invalid + t.throttled + t.upstream_error + t.other
    );
    assert_eq!(
        r.nothing_would_break,
        t.deny + t.would_deny == 0 && r.drop_totals.records == 0
    );
    assert_eq!(
        r.workloads.iter().map(|w| w.count).sum::<u64>(),
        t.deny + t.would_deny
    );
    for w in &r.workloads {
        assert!(!w.requests.is_empty() && !w.peers.is_empty());
        assert_eq!(w.requests.iter().map(|q| q.count).sum::<u64>(), w.count);
        for q in &w.requests {
            assert!(q.count > 0);
            assert_eq!(q.count, q.deny + q.would_deny);
            assert_eq!(q.first_seen.is_some(), q.last_seen.is_some());
            assert!(!q.other_rules.contains(&q.rule));
        }
    }

    // Drops add up (packet counts stop at u64::MAX, whatever the order).
    let d = r.drop_totals;
    assert_eq!(d.records, l.drops);
    assert_eq!(d.records, d.dropped_records + d.would_drop_records);
    assert_eq!(r.drops.iter().map(|w| w.records).sum::<u64>(), d.records);
    let sum = |f: fn(&imdsguard_core::decisions::Drops) -> u64| {
        r.drops.iter().fold(0u64, |a, w| a.saturating_add(f(w)))
    };
    assert_eq!(sum(|w| w.dropped), d.dropped_packets);
    assert_eq!(sum(|w| w.would_drop), d.would_drop_packets);
    for w in &r.drops {
        assert!(w.records > 0);
        assert_eq!(w.packets, w.dropped.saturating_add(w.would_drop));
        assert_eq!(w.first_seen.is_some(), w.last_seen.is_some());
        assert_eq!(w.pods.is_empty(), w.namespace == "-");
    }

    // Malformed lines: the first ones, in order, inside the input.
    assert_eq!(
        r.malformed.len() as u64,
        l.malformed.min(MAX_MALFORMED_KEPT as u64)
    );
    assert!(r.malformed.windows(2).all(|m| m[0].line < m[1].line));
    assert!(
        r.malformed
            .iter()
            .all(|m| m.source == "whole" && (1..=l.read).contains(&m.line) && !m.error.is_empty())
    );
});
