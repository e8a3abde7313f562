//! The `doesitcache` command, run as a user would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use testbed::origin::{Origin, Reply};

fn doesitcache(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_doesitcache"))
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[tokio::test]
async fn a_cacheable_url_exits_0_and_says_why() {
    let origin = Origin::start().await.unwrap();
    origin.always(
        "/yes",
        Reply::ok("x")
            .header("cache-control", "max-age=3600")
            .header("etag", "\"v\""),
    );
    let url = origin.url("/yes");
    let (code, out, err) = tokio::task::spawn_blocking(move || doesitcache(&[&url]))
        .await
        .unwrap();
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("storable in a private cache: yes"), "{out}");
    assert!(out.contains("3600s from max-age"), "{out}");
    assert!(out.contains("ETag \"v\""), "{out}");
    assert!(out.contains("HIT"), "{out}");
    assert_eq!(origin.hits("/yes"), 1);
}

#[tokio::test]
async fn an_uncacheable_url_exits_1_and_names_the_directive() {
    let origin = Origin::start().await.unwrap();
    origin.always("/no", Reply::ok("x").header("cache-control", "no-store"));
    let url = origin.url("/no");
    let (code, out, _) = tokio::task::spawn_blocking(move || doesitcache(&[&url]))
        .await
        .unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no-store"), "{out}");
    assert!(out.contains("MISS"), "{out}");
}

#[tokio::test]
async fn shared_mode_and_request_headers() {
    let origin = Origin::start().await.unwrap();
    origin.always(
        "/p",
        Reply::ok("x").header("cache-control", "private, max-age=60"),
    );
    let url = origin.url("/p");
    let (code, out, _) = tokio::task::spawn_blocking(move || {
        doesitcache(&["--shared", "-H", "Accept: text/plain", &url])
    })
    .await
    .unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("private and this cache is shared"), "{out}");
    assert_eq!(
        origin.requests("/p")[0].header("accept"),
        Some("text/plain")
    );
}

#[test]
fn an_unreachable_url_exits_2_with_a_clear_error() {
    let port = testbed::net::free_port().unwrap();
    let (code, _, err) = doesitcache(&[&format!("http://127.0.0.1:{port}/")]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot fetch"), "{err}");
}

#[test]
fn a_bad_header_is_refused_with_its_name() {
    let (code, _, err) = doesitcache(&["-H", "no colon here", "http://127.0.0.1:9/"]);
    assert_eq!(code, 2);
    assert!(err.contains("no colon here"), "{err}");
}

#[test]
fn without_a_url_the_demo_shows_a_hit_a_revalidation_and_a_miss() {
    let (code, out, err) = doesitcache(&[]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    for expected in ["HIT", "REVALIDATED", "MISS", "no-store"] {
        assert!(out.contains(expected), "{expected} missing from:\n{out}");
    }
}
