//! imdsguard-lab (work in progress).
