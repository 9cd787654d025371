//! Report renderers: table (for people), JSON (for machines), SARIF (for code scanning).

pub mod json;
pub mod sarif;
pub mod table;
