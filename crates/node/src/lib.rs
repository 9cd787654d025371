//! imdsguard-node (work in progress).
