//! Report renderers: table (for people), JSON (for machines), SARIF (for code scanning).

pub mod json;
pub mod policyreport;
pub mod sarif;
pub mod table;
