//! `doesitcache URL`: asks a URL twice through the cache and explains the verdict.
//!
//! ```text
//! doesitcache https://example.com/ [--shared] [-H 'Accept: text/html']...
//! doesitcache            # the demo: three resources of a built-in local origin
//! ```
//!
//! It prints whether the first response may be stored and why, its freshness lifetime
//! and where it comes from, its validators and Vary, and how the second request was
//! served. For a URL, the exit status is 0 when the second response came from the cache (a hit,
//! a stale response the cache may serve, or a stored body revalidated with a 304), 1
//! when it did not, and 2 when the URL could not be fetched.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use cachecontrol::policy::{CachePolicy, Exchange, PolicyOptions};
use cachecontrol::{CacheControl, CacheStatus, MemoryCache};
use clap::Parser;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

/// Does this URL cache? Requests it twice through an RFC 9111 cache and explains.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The URL to ask for. Without one, a demo runs against a small origin started
    /// on a loopback port, serving a cacheable, a revalidatable and an uncacheable
    /// resource.
    url: Option<reqwest::Url>,
    /// Judge as a shared cache (a proxy or CDN) instead of a private one.
    #[arg(long)]
    shared: bool,
    /// A request header, as `Name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let result = match &args.url {
        Some(url) => run(&args, url).await,
        None => demo(&args).await,
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("doesitcache: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the check on each resource of a built-in origin; succeeds when it could.
async fn demo(args: &Args) -> Result<bool> {
    let origin = demo::Origin::start()
        .await
        .context("cannot start the demo origin")?;
    println!(
        "demo: an origin on {} serves three resources\n",
        origin.base
    );
    for path in demo::PATHS {
        let url = reqwest::Url::parse(&format!("{}{path}", origin.base)).context("demo URL")?;
        run(args, &url).await?;
        println!();
    }
    println!("(run `doesitcache URL` to ask about your own)");
    Ok(true)
}

async fn run(args: &Args, url: &reqwest::Url) -> Result<bool> {
    let headers = parse_headers(&args.headers)?;
    let store = Arc::new(MemoryCache::new(256 << 20));
    let cache = CacheControl::builder(store)
        .shared(args.shared)
        .follow_redirects(10)
        .build();
    let client = reqwest_middleware::ClientBuilder::new(
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("doesitcache/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the HTTP client")?,
    )
    .with(cache)
    .build();

    let request_time = SystemTime::now();
    let first = client
        .get(url.clone())
        .headers(headers.clone())
        .send()
        .await
        .with_context(|| format!("cannot fetch {}", url))?;
    let response_time = SystemTime::now();
    let status = first.status();
    let final_url = first.url().clone();
    let response_headers = first.headers().clone();
    let length = first
        .bytes()
        .await
        .with_context(|| format!("cannot read the body of {final_url}"))?
        .len();
    println!("GET {final_url} -> {status} ({length} bytes)");
    explain(
        args,
        &headers,
        status,
        &response_headers,
        request_time,
        response_time,
    );

    let second = client
        .get(url.clone())
        .headers(headers)
        .send()
        .await
        .with_context(|| format!("cannot fetch {} the second time", url))?;
    let served = second.extensions().get::<CacheStatus>().copied();
    second
        .bytes()
        .await
        .context("cannot read the second body")?;
    let (verdict, cached) = match served {
        Some(CacheStatus::Hit) => ("HIT: served from the cache, no request sent", true),
        Some(CacheStatus::Stale) => ("STALE: served from the cache while stale", true),
        Some(CacheStatus::Revalidated) => (
            "REVALIDATED: the origin answered 304 and the stored body was served",
            true,
        ),
        Some(CacheStatus::Miss) => ("MISS: fetched again from the origin", false),
        Some(CacheStatus::Bypass) => ("BYPASS: the cache was not involved", false),
        Some(_) | None => ("the cache did not say how it served it", false),
    };
    println!("second request: {verdict}");
    Ok(cached)
}

fn explain(
    args: &Args,
    request_headers: &HeaderMap,
    status: http::StatusCode,
    response_headers: &HeaderMap,
    request_time: SystemTime,
    response_time: SystemTime,
) {
    let seconds = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    let options = PolicyOptions {
        shared: args.shared,
        ..PolicyOptions::default()
    };
    let exchange = Exchange {
        method: &Method::GET,
        request_headers,
        status,
        response_headers,
        request_time: seconds(request_time),
        response_time: seconds(response_time),
    };
    let mode = if args.shared { "shared" } else { "private" };
    let policy = match CachePolicy::new(&exchange, &options) {
        Ok(policy) => policy,
        Err(reason) => {
            println!("  storable in a {mode} cache: no, {reason}");
            return;
        }
    };
    let now = seconds(response_time);
    println!("  storable in a {mode} cache: yes");
    let lifetime = policy.freshness_lifetime();
    let age = policy.current_age(now);
    let state = if policy.is_fresh(now) {
        "fresh"
    } else {
        "stale"
    };
    println!("  freshness lifetime: {lifetime}; current age {age}s: {state}");
    if policy.requires_revalidation() {
        println!("  no-cache: every reuse is revalidated first");
    }
    if policy.must_revalidate() {
        println!("  must-revalidate: never served stale");
    }
    if policy.stale_while_revalidate() > 0 {
        println!(
            "  stale-while-revalidate: served stale for {}s while revalidating",
            policy.stale_while_revalidate()
        );
    }
    if policy.stale_if_error() > 0 {
        println!(
            "  stale-if-error: served stale for {}s when the origin fails",
            policy.stale_if_error()
        );
    }
    let show = |v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
    match (policy.etag(), policy.last_modified()) {
        (None, None) => println!("  validators: none, so once stale it is fetched again in full"),
        (etag, modified) => {
            let mut parts = Vec::new();
            if let Some(etag) = etag {
                parts.push(format!("ETag {}", show(etag)));
            }
            if let Some(modified) = modified {
                parts.push(format!("Last-Modified {}", show(modified)));
            }
            println!(
                "  validators: {} (revalidated with a conditional request)",
                parts.join(", ")
            );
        }
    }
    if let Some(vary) = policy.vary() {
        let names: Vec<&str> = vary.names().iter().map(HeaderName::as_str).collect();
        println!("  varies on: {}", names.join(", "));
    }
}

mod demo {
    //! A tiny HTTP/1.1 origin for the demo: three canned responses.

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// The demo's resources.
    pub const PATHS: [&str; 3] = [
        "/fresh-for-an-hour",
        "/revalidate-with-etag",
        "/never-store",
    ];

    /// A running demo origin.
    pub struct Origin {
        pub base: String,
    }

    impl Origin {
        pub async fn start() -> std::io::Result<Origin> {
            let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
            let base = format!("http://{}", listener.local_addr()?);
            tokio::spawn(async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    tokio::spawn(async move {
                        let mut head = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        let head = String::from_utf8_lossy(&head);
                        let path = head.split_whitespace().nth(1).unwrap_or("/");
                        let revalidating =
                            head.to_ascii_lowercase().contains("if-none-match: \"v1\"");
                        let date = httpdate_now();
                        let (status, headers, body) = match path {
                            "/fresh-for-an-hour" => {
                                ("200 OK", "cache-control: max-age=3600\r\n", "fresh\n")
                            }
                            "/revalidate-with-etag" if revalidating => (
                                "304 Not Modified",
                                "etag: \"v1\"\r\ncache-control: no-cache\r\n",
                                "",
                            ),
                            "/revalidate-with-etag" => (
                                "200 OK",
                                "etag: \"v1\"\r\ncache-control: no-cache\r\n",
                                "validated\n",
                            ),
                            "/never-store" => ("200 OK", "cache-control: no-store\r\n", "secret\n"),
                            _ => ("404 Not Found", "", "no such resource\n"),
                        };
                        let response = format!(
                            "HTTP/1.1 {status}\r\ndate: {date}\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = stream.write_all(response.as_bytes()).await;
                    });
                }
            });
            Ok(Origin { base })
        }
    }

    fn httpdate_now() -> String {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        cachecontrol::policy::format_http_date(secs)
    }
}

fn parse_headers(lines: &[String]) -> Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            bail!("header {line:?} is not `Name: value`");
        };
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .with_context(|| format!("header name {:?} is not valid", name.trim()))?;
        let value = HeaderValue::from_str(value.trim())
            .with_context(|| format!("the value of header {name} is not valid"))?;
        headers.append(name, value);
    }
    Ok(headers)
}
