//! Fetches a job's artifacts into its run directory through `cachecontrol`.
//!
//! Not written yet: this crate is a placeholder in the workspace until its issue is taken.

pub mod unpack;
