//! A GCE metadata server emulator, built on [`imdsguard_core::gcp`].
