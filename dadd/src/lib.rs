//! Dadd ("daddy"), a daemon administrator: give it a short spec, and it runs the
//! spec's command on a host, with the files and settings it needs, and cleans up
//! after it.
//!
//! [`spec`]: the job spec, JSON or YAML, checked field by field.
#![cfg(unix)]

pub mod spec;
