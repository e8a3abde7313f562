//! Failure mail over SMTP.
//!
//! Not written yet: this crate is a placeholder in the workspace until its issue is taken.
