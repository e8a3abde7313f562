//! Dadd: POST a short spec to a master; a worker runs it.
//!
//! Not written yet: this crate is a placeholder in the workspace until its issue is taken.
