//! Azure IMDS protocol facts and request rules (work in progress).
