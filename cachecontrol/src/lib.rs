//! RFC 9111 HTTP caching for reqwest (being written).
