//! The command line's own work, beside the server: `cairn baseline` and `cairn drift`
//! ([`offline`]), `cairn train` and `cairn runs` ([`training`]), `cairn selftest` ([`selftest`]).
//! `main` parses the arguments and calls these; nothing in the server calls them.

pub mod offline;
#[cfg(feature = "cuda")]
pub mod selftest;
pub mod training;
