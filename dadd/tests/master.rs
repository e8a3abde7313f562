//! `dadd master`, end to end: the real binary on a free loopback port with a
//! temporary data directory, called over HTTP, and a real `dadd run --master`
//! reporting to it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

/// A running `dadd master`, killed when dropped.
struct Master {
    child: tokio::process::Child,
    port: u16,
    url: String,
}

impl Master {
    /// `dadd master --listen 127.0.0.1:PORT --data-dir DATA_DIR ARGS...`, once
    /// it accepts connections.
    async fn start(data_dir: &Path, args: &[&str]) -> Master {
        let port = testbed::net::free_port().unwrap();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dadd"))
            .arg("master")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .env_remove("DADD_TOKEN")
            .env("DADD_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        tokio::task::spawn_blocking(move || {
            testbed::net::wait_for_port(port, Duration::from_secs(30))
        })
        .await
        .unwrap()
        .unwrap();
        let mut line = String::new();
        let stdout = child.stdout.take().unwrap();
        tokio::io::AsyncBufReadExt::read_line(&mut tokio::io::BufReader::new(stdout), &mut line)
            .await
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        assert_eq!(line.trim(), url, "it prints the URL it listens on");
        Master { child, port, url }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn json_of(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
    (status, body)
}

async fn submit(master: &Master, spec: &Value) -> String {
    let response = client()
        .post(master.url("/api/processes"))
        .header("content-type", "application/json")
        .body(spec.to_string())
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

async fn show(master: &Master, id: &str) -> Value {
    let response = client()
        .get(master.url(&format!("/api/processes/{id}")))
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn state_names(process: &Value) -> Vec<&str> {
    process["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|state| state["state"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitted_spec_is_shown_and_listed_as_queued_until_a_worker_takes_it() {
    let data = tempfile::tempdir().unwrap();
    let master = Master::start(data.path(), &[]).await;

    let id = submit(
        &master,
        &json!({"name": "hello", "cmd": "echo hi", "timeout": "90s"}),
    )
    .await;
    let process = show(&master, &id).await;
    assert_eq!(process["id"], id);
    assert_eq!(process["name"], "hello");
    assert_eq!(process["state"], "queued", "no worker has taken it");
    assert_eq!(process["spec"]["cmd"], json!(["echo", "hi"]));
    assert_eq!(process["spec"]["timeout"], "1m 30s");
    assert_eq!(process["states"], json!([]));
    assert_eq!(process["has_log"], false);

    let (status, list) = json_of(
        client()
            .get(master.url("/api/processes"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["processes"][0]["id"], id);

    let (status, body) = json_of(
        client()
            .get(master.url("/api/processes/nope"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "no process nope");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_reports_its_states_in_order_and_the_log_of_its_failure() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let master = Master::start(data.path(), &["--token", "s3cret"]).await;
    let spec_path = work.path().join("fail.json");
    std::fs::write(
        &spec_path,
        json!({"name": "fails", "cmd": ["sh", "-c", "echo first line; echo oops >&2; exit 3"]})
            .to_string(),
    )
    .unwrap();

    // Started by hand, under an id the master has never seen.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_dadd"))
        .arg("run")
        .arg(&spec_path)
        .arg("--foreground")
        .arg("--master")
        .arg(&master.url)
        .arg("--id")
        .arg("by-hand-1")
        .arg("--cache-dir")
        .arg(work.path().join("cache"))
        .env("DADD_TOKEN", "s3cret")
        .env("TMPDIR", work.path())
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(
        !stderr.contains("WARN"),
        "every report reached the master: {stderr}"
    );

    let (status, process) = json_of(
        client()
            .get(master.url("/api/processes/by-hand-1"))
            .bearer_auth("s3cret")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{process}");
    assert_eq!(
        state_names(&process),
        ["init", "setup", "running", "failed"]
    );
    assert_eq!(process["state"], "failed");
    assert_eq!(process["exit_code"], 3);
    assert_eq!(process["host"], "127.0.0.1");
    assert_eq!(process["pid"], process["states"][2]["pid"]);
    assert_eq!(
        process["spec"],
        Value::Null,
        "a run started by hand has no spec"
    );
    assert_eq!(process["has_log"], true);

    let log = client()
        .get(master.url("/api/processes/by-hand-1/log"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(log.status(), StatusCode::OK);
    let log = log.text().await.unwrap();
    assert!(log.contains("first line") && log.contains("oops"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_required_when_configured() {
    let data = tempfile::tempdir().unwrap();
    let master = Master::start(data.path(), &["--token", "s3cret"]).await;
    let list = master.url("/api/processes");

    let (status, body) = json_of(client().get(&list).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["error"].as_str().unwrap().contains("bearer token"),
        "{body}"
    );
    let (status, _) = json_of(
        client()
            .get(&list)
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let file = client().get(master.url("/files/x")).send().await.unwrap();
    assert_eq!(
        file.status(),
        StatusCode::UNAUTHORIZED,
        "the file store too"
    );

    let (status, _) = json_of(
        client()
            .get(&list)
            .bearer_auth("s3cret")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_on_a_public_address_without_a_token_refuses_to_start() {
    let data = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_dadd"))
        .args(["master", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(data.path())
        .env_remove("DADD_TOKEN")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0 without a token"),
        "{stderr}"
    );
}

/// A request written by hand: HTTP clients remove `..` from URLs before sending.
fn raw_status(port: u16, request_line: &str) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "{request_line}\r\nHost: localhost\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_put_and_got_and_paths_that_escape_are_refused() {
    let data = tempfile::tempdir().unwrap();
    let master = Master::start(data.path(), &["--max-file-bytes", "1000"]).await;

    let put = client()
        .put(master.url("/files/tools/app.sh"))
        .body("echo from the file store\n")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
    let got = client()
        .get(master.url("/files/tools/app.sh"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.text().await.unwrap(), "echo from the file store\n");
    let replaced = client()
        .put(master.url("/files/tools/app.sh"))
        .body("v2")
        .send()
        .await
        .unwrap();
    assert_eq!(replaced.status(), StatusCode::NO_CONTENT);

    let (status, body) = json_of(
        client()
            .put(master.url("/files/tools/..%2F..%2Fescaped"))
            .body("x")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("`..`"), "{body}");
    let port = master.port;
    for request_line in [
        "PUT /files/../escaped HTTP/1.1",
        "GET /files/a/../../dadd.sqlite3 HTTP/1.1",
    ] {
        let answer = tokio::task::spawn_blocking(move || raw_status(port, request_line))
            .await
            .unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{request_line}: {answer}"
        );
    }
    assert!(!data.path().join("escaped").exists());

    let (status, body) = json_of(
        client()
            .put(master.url("/files/big"))
            .body(vec![0u8; 2000])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        body["error"].as_str().unwrap().contains("1000 bytes"),
        "{body}"
    );

    let (status, _) = json_of(
        client()
            .get(master.url("/files/nothing"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_master_still_shows_what_it_acknowledged() {
    let data = tempfile::tempdir().unwrap();
    let master = Master::start(data.path(), &[]).await;
    let id = submit(&master, &json!({"cmd": ["true"]})).await;
    let report = client()
        .post(master.url(&format!("/api/processes/{id}/states")))
        .header("content-type", "application/json")
        .body(json!({"at": "2026-11-28T01:02:03Z", "state": "running", "pid": 4242}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(report.status(), StatusCode::NO_CONTENT);
    let log = client()
        .put(master.url(&format!("/api/processes/{id}/log")))
        .body("the log")
        .send()
        .await
        .unwrap();
    assert_eq!(log.status(), StatusCode::NO_CONTENT);
    // SIGKILL: no chance to flush anything it had not written before answering.
    master.kill().await;

    let master = Master::start(data.path(), &[]).await;
    let process = show(&master, &id).await;
    assert_eq!(process["state"], "running");
    assert_eq!(process["pid"], 4242);
    assert_eq!(state_names(&process), ["running"]);
    assert_eq!(process["spec"]["cmd"], json!(["true"]));
    let log = client()
        .get(master.url(&format!("/api/processes/{id}/log")))
        .send()
        .await
        .unwrap();
    assert_eq!(log.text().await.unwrap(), "the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_json_and_bad_specs_are_refused_with_a_message_naming_the_problem() {
    let data = tempfile::tempdir().unwrap();
    let master = Master::start(data.path(), &[]).await;
    let post = |path: &str, body: &'static str| {
        client()
            .post(master.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let (status, body) = json_of(post("/api/processes", "{not json").await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().unwrap().contains("not valid JSON"),
        "{body}"
    );

    let (status, body) = json_of(
        post("/api/processes", r#"{"cmd": [], "timeout": true}"#)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("cmd") && error.contains("timeout"),
        "{error}"
    );

    let (status, body) = json_of(
        post("/api/processes/job-1/states", r#"{"state": "flying"}"#)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().unwrap().contains("the state change"),
        "{body}"
    );

    let (status, body) = json_of(post("/api/processes/job-1/states", "[").await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let (status, body) = json_of(
        client()
            .get(master.url("/api/processes/a%20b"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().unwrap().contains("process id"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_have_a_size_limit_and_belong_to_a_known_process() {
    let data = tempfile::tempdir().unwrap();
    let master = Master::start(data.path(), &["--max-log-bytes", "2000000"]).await;
    let id = submit(&master, &json!({"cmd": ["false"]})).await;
    let put_log = |id: &str, size: usize| {
        client()
            .put(master.url(&format!("/api/processes/{id}/log")))
            .body(vec![b'x'; size])
            .send()
    };

    // Larger than a spec may be (1 MiB), within the log's own limit.
    let fits = put_log(&id, 1_500_000).await.unwrap();
    assert_eq!(fits.status(), StatusCode::NO_CONTENT);
    let (status, body) = json_of(put_log(&id, 2_000_001).await.unwrap()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    let (status, body) = json_of(put_log("unknown", 10).await.unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "no process unknown");

    let (status, body) = json_of(
        client()
            .delete(master.url("/api/processes"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["error"], "/api/processes does not take DELETE");
}
