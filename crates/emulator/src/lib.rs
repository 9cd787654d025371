//! imdsguard-emulator (work in progress).
