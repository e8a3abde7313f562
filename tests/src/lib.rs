//! Shared helpers for the end-to-end tests: start real servers on free loopback ports.
