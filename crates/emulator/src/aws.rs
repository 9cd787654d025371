//! An AWS EC2 instance metadata emulator (IMDSv1 and IMDSv2), built on [`imdsguard_core::aws`].
