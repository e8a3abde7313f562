//! The middleware's own errors.

/// Errors the middleware returns (inside `reqwest_middleware::Error::Middleware`).
///
/// Store failures are not among them: a store that fails is logged and bypassed,
/// never allowed to fail a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The redirect chain was longer than
    /// [`follow_redirects`](crate::CacheControlBuilder::follow_redirects) allows.
    #[error("more than {max} redirects, the last one from {url}")]
    TooManyRedirects {
        /// The URL of the last redirect.
        url: String,
        /// The configured maximum.
        max: usize,
    },
}
