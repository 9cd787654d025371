//! Access rules for AWS and GCP metadata requests: the per-cloud counterpart of
//! [`crate::access`]'s Azure decisions.
