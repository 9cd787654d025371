//! `imdsguard_core::engine_detect::AksCluster::from_json` (the `--aks-cluster FILE` of
//! `az aks show -o json`, a file the user hands over) on arbitrary text. Properties: it
//! never panics; a JSON error points inside the input (line 1 to the number of lines + 1,
//! column at least 1) and says what was wrong; a file it accepts reads the same again.
#![no_main]

use imdsguard_core::engine_detect::{AksCluster, AksClusterError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match AksCluster::from_json(text) {
        Ok(cluster) => {
            let again = AksCluster::from_json(text).expect("accepted once, accepted again");
            assert_eq!(format!("{cluster:?}"), format!("{again:?}"));
        }
        Err(AksClusterError::Json {
            line,
            column,
            message,
        }) => {
            let lines = text.split('\n').count();
            assert!(
                (1..=lines + 1).contains(&line),
                "line {line} of {lines}: {message}"
            );
            assert!(column >= 1, "column {column}");
            assert!(!message.is_empty());
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
