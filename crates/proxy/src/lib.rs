//! imdsguard-proxy (work in progress).
