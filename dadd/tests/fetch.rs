//! `dadd fetch`, end to end: the real binary against a real origin on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Output;

use serde_json::json;
use testbed::origin::{Origin, Reply};

async fn dadd_fetch(spec: &Path, dir: &Path, cache: &Path) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_dadd"))
        .arg("fetch")
        .arg(spec)
        .arg(dir)
        .arg("--cache-dir")
        .arg(cache)
        .output()
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The `served` column of the report's line for `name`.
fn served(report: &str, name: &str) -> String {
    report
        .lines()
        .find(|line| line.split_whitespace().next() == Some(name))
        .and_then(|line| line.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no line for {name} in:\n{report}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_fetch_with_the_same_cache_is_served_from_it_without_the_origin() {
    let root = tempfile::tempdir().unwrap();
    let origin = Origin::start().await.unwrap();
    let big = vec![b'x'; 3 * 1024 * 1024];
    origin.always(
        "/big.bin",
        Reply::ok(big.clone()).header("cache-control", "max-age=3600"),
    );
    origin.always(
        "/small.txt",
        Reply::ok("small").header("cache-control", "max-age=3600"),
    );
    let spec = root.path().join("spec.yaml");
    let yaml = format!(
        "cmd: 'true'\ndownload_urls:\n  - {{name: data/big.bin, url: '{}'}}\n  - {{name: small.txt, url: '{}', read_only: true}}\n",
        origin.url("/big.bin"),
        origin.url("/small.txt")
    );
    std::fs::write(&spec, yaml).unwrap();
    let cache = root.path().join("cache");

    let first = dadd_fetch(&spec, &root.path().join("one"), &cache).await;
    assert!(first.status.success(), "{}", text(&first.stderr));
    let report = text(&first.stdout);
    assert_eq!(served(&report, "data/big.bin"), "downloaded", "{report}");
    assert_eq!(served(&report, "small.txt"), "downloaded", "{report}");
    assert!(
        report.contains("2 artifact(s)") && report.contains("3.0 MiB over the network"),
        "{report}"
    );
    assert_eq!(origin.total_hits(), 2);

    let second = dadd_fetch(&spec, &root.path().join("two"), &cache).await;
    assert!(second.status.success(), "{}", text(&second.stderr));
    let report = text(&second.stdout);
    assert_eq!(served(&report, "data/big.bin"), "cached", "{report}");
    assert_eq!(served(&report, "small.txt"), "cached", "{report}");
    assert!(report.contains("0 B over the network"), "{report}");
    assert_eq!(origin.total_hits(), 2, "the origin saw no new request");
    assert_eq!(
        std::fs::read(root.path().join("two/data/big.bin")).unwrap(),
        big
    );
    assert_eq!(
        std::fs::read_to_string(root.path().join("two/small.txt")).unwrap(),
        "small"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fetch_exits_non_zero_naming_the_artifact() {
    let root = tempfile::tempdir().unwrap();
    let origin = Origin::start().await.unwrap();
    origin.always("/missing", Reply::status(404));
    let spec = root.path().join("spec.json");
    let body = json!({"cmd": "true", "download_urls": {"missing.txt": origin.url("/missing")}});
    std::fs::write(&spec, body.to_string()).unwrap();

    let output = dadd_fetch(&spec, &root.path().join("dir"), &root.path().join("cache")).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("missing.txt") && stderr.contains("404"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_spec_is_refused_before_anything_is_fetched() {
    let root = tempfile::tempdir().unwrap();
    let origin = Origin::start().await.unwrap();
    let spec = root.path().join("spec.json");
    let body =
        json!({"cmd": "true", "download_urls": {"a": origin.url("/a"), "/abs": origin.url("/b")}});
    std::fs::write(&spec, body.to_string()).unwrap();

    let output = dadd_fetch(&spec, &root.path().join("dir"), &root.path().join("cache")).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("download_urls[\"/abs\"]: \"/abs\" is refused"),
        "{stderr}"
    );
    assert_eq!(origin.total_hits(), 0);
}
