//! The GCE metadata server (and GKE's): the protocol's rules as pure functions, as
//! [`crate::imds`] is for Azure.
