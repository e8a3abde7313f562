//! The test bed: real servers for the workspace's tests.
//!
//! Every test that needs a server starts its own, on a free loopback port and in a
//! temporary directory, and the server stops when the handle is dropped. Nothing here
//! depends on services the machine may already run: a fresh Debian machine with the
//! packages that `scripts/test` installs is enough, and a test can stop and restart
//! its own server to inject faults.
//!
//! The end-to-end tests across crates live in `tests/tests/`.

pub mod chromium;
pub mod net;
pub mod origin;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod smtp;
pub mod tls;
