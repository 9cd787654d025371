//! Access-token inspection: claims and fingerprints, never the token (work in progress).
