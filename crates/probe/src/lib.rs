//! imdsguard-probe (work in progress).
