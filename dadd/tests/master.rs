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

mod common;

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
        let mut child = common::master(data_dir, port, args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        common::wait_for_port(port).await;
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

/// A worker's heartbeat, as `dadd worker` sends it: the answer.
async fn heartbeat(master: &Master, host: &str, max_processes: u32, known: &[&str]) -> Value {
    let response = client()
        .post(master.url(&format!("/api/hosts/{host}/heartbeat")))
        .header("content-type", "application/json")
        .body(json!({"max_processes": max_processes, "known": known}).to_string())
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// The ids a heartbeat's answer offers to start.
fn offered(reply: &Value) -> Vec<String> {
    reply["start"]
        .as_array()
        .unwrap()
        .iter()
        .map(|assignment| assignment["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn report(master: &Master, id: &str, state: Value) -> StatusCode {
    client()
        .post(master.url(&format!("/api/processes/{id}/states")))
        .header("content-type", "application/json")
        .body(state.to_string())
        .send()
        .await
        .unwrap()
        .status()
}

async fn hosts(master: &Master) -> Value {
    let (status, body) =
        json_of(client().get(master.url("/api/hosts")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_goes_to_the_live_host_with_the_fewest_processes_and_is_offered_until_known() {
    let data = tempfile::tempdir().unwrap();
    let master = Master::start(data.path(), &[]).await;
    assert_eq!(heartbeat(&master, "a", 2, &[]).await["start"], json!([]));
    heartbeat(&master, "b", 2, &[]).await;

    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(
            submit(
                &master,
                &json!({"name": format!("job{n}"), "cmd": ["true"]}),
            )
            .await,
        );
    }
    let on_a = offered(&heartbeat(&master, "a", 2, &[]).await);
    let on_b = offered(&heartbeat(&master, "b", 2, &[]).await);
    assert_eq!(
        (on_a.len(), on_b.len()),
        (2, 2),
        "spread: {on_a:?} {on_b:?}"
    );
    let mut all: Vec<String> = on_a.iter().chain(&on_b).cloned().collect();
    all.sort();
    let mut submitted = ids.clone();
    submitted.sort();
    assert_eq!(all, submitted, "each offered to exactly one host");
    let process = show(&master, &on_a[0]).await;
    assert_eq!(process["state"], "dispatched");
    assert_eq!(process["host"], "a");

    // An answer lost on the way: offered again, until the worker knows it.
    assert_eq!(offered(&heartbeat(&master, "a", 2, &[]).await), on_a);
    let known: Vec<&str> = on_a.iter().map(String::as_str).collect();
    assert_eq!(
        offered(&heartbeat(&master, "a", 2, &known).await),
        Vec::<String>::new()
    );

    // The offer carries the spec, as `dadd run` takes it.
    let reply = heartbeat(&master, "b", 2, &[]).await;
    assert_eq!(reply["start"][0]["spec"]["cmd"], json!(["true"]));
    assert_eq!(reply["heartbeat_every_ms"], 1000);

    // No room: a third host of one slot gets the next, then nothing.
    heartbeat(&master, "c", 1, &[]).await;
    let fifth = submit(&master, &json!({"cmd": ["true"]})).await;
    let sixth = submit(&master, &json!({"cmd": ["true"]})).await;
    assert_eq!(offered(&heartbeat(&master, "c", 1, &[]).await), [fifth]);
    assert_eq!(
        show(&master, &sixth).await["state"],
        "queued",
        "every host is full"
    );
    let listed = hosts(&master).await;
    let names: Vec<&str> = listed["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|host| host["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(listed["hosts"][0]["up"], true);
    assert_eq!(listed["hosts"][0]["max_processes"], 2);
    assert_eq!(listed["hosts"][0]["processes"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_that_names_a_host_waits_for_that_host() {
    let data = tempfile::tempdir().unwrap();
    let master = Master::start(data.path(), &[]).await;
    heartbeat(&master, "a", 4, &[]).await;
    let (status, body) = json_of(
        client()
            .post(master.url("/api/processes"))
            .header("content-type", "application/json")
            .body(json!({"cmd": ["true"], "host": "gpu-1"}).to_string())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        body["warning"],
        "no host gpu-1 has registered with this master: the process waits for it"
    );
    let id = body["id"].as_str().unwrap().to_owned();
    assert!(offered(&heartbeat(&master, "a", 4, &[]).await).is_empty());
    assert_eq!(show(&master, &id).await["state"], "queued");
    assert_eq!(offered(&heartbeat(&master, "gpu-1", 1, &[]).await), [id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_host_loses_its_unstarted_work_and_its_started_work_shows_lost_until_it_is_back() {
    let data = tempfile::tempdir().unwrap();
    let master = Master::start(
        data.path(),
        &["--heartbeat-every", "100ms", "--host-timeout", "700ms"],
    )
    .await;
    heartbeat(&master, "a", 4, &[]).await;
    let started = submit(&master, &json!({"cmd": ["sleep", "100"]})).await;
    let offered_only = submit(&master, &json!({"cmd": ["true"]})).await;
    assert_eq!(
        offered(&heartbeat(&master, "a", 4, &[&started]).await),
        std::slice::from_ref(&offered_only)
    );
    assert_eq!(
        report(
            &master,
            &started,
            json!({"at": "2026-11-28T01:02:03Z", "state": "running", "pid": 4242})
        )
        .await,
        StatusCode::NO_CONTENT
    );
    // Assigned after a's last heartbeat: never offered to it.
    let unstarted = submit(&master, &json!({"cmd": ["true"]})).await;
    assert_eq!(show(&master, &unstarted).await["host"], "a");

    // a goes silent; b keeps beating.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let taken = loop {
        let offers = offered(&heartbeat(&master, "b", 4, &[]).await);
        if !offers.is_empty() {
            break offers;
        }
        assert!(tokio::time::Instant::now() < deadline, "never moved to b");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        taken,
        std::slice::from_ref(&unstarted),
        "only the unstarted one moves"
    );
    assert_eq!(show(&master, &unstarted).await["host"], "b");
    assert_eq!(show(&master, &started).await["state"], "lost");
    assert_eq!(show(&master, &offered_only).await["state"], "lost");
    assert_eq!(hosts(&master).await["hosts"][0]["up"], false);

    // a comes back: its running process is running again, and what it never
    // received is offered to it again (and to no one else).
    let reply = heartbeat(&master, "a", 4, &[&started]).await;
    assert_eq!(offered(&reply), std::slice::from_ref(&offered_only));
    assert_eq!(show(&master, &started).await["state"], "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_end_what_has_not_started_and_reach_the_worker_of_what_has() {
    let data = tempfile::tempdir().unwrap();
    let master = Master::start(data.path(), &[]).await;
    let kill = |id: String| {
        let url = master.url(&format!("/api/processes/{id}/kill"));
        async move { json_of(client().post(url).send().await.unwrap()).await }
    };

    let queued = submit(&master, &json!({"cmd": ["true"]})).await;
    let (status, body) = kill(queued.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["state"], "failed");
    assert_eq!(body["reason"], "killed before it started");
    let (status, body) = kill(queued.clone()).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        body["error"],
        format!("process {queued}: it has already ended (failed)")
    );

    heartbeat(&master, "a", 4, &[]).await;
    let running = submit(&master, &json!({"cmd": ["sleep", "100"]})).await;
    assert_eq!(
        offered(&heartbeat(&master, "a", 4, &[]).await),
        std::slice::from_ref(&running)
    );
    report(
        &master,
        &running,
        json!({"at": "2026-11-28T01:02:03Z", "state": "running", "pid": 4242}),
    )
    .await;
    let (status, body) = kill(running.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["state"], "running", "its worker kills it");
    let reply = heartbeat(&master, "a", 4, &[&running]).await;
    assert_eq!(reply["kill"], json!([running]));
    report(
        &master,
        &running,
        json!({"at": "2026-11-28T01:02:04Z", "state": "failed", "signal": 15, "reason": "terminated by SIGTERM"}),
    )
    .await;
    assert_eq!(show(&master, &running).await["state"], "failed");

    let (status, body) = kill("p-nope".to_owned()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "no process p-nope");
    // Started by hand with `dadd run --master`: no worker of ours runs it.
    report(
        &master,
        "by-hand",
        json!({"at": "2026-11-28T01:02:03Z", "state": "running", "pid": 7}),
    )
    .await;
    let (status, body) = kill("by-hand".to_owned()).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        body["error"].as_str().unwrap().contains("started by hand"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_host_gives_up_its_unstarted_work() {
    let data = tempfile::tempdir().unwrap();
    let master = Master::start(data.path(), &[]).await;
    heartbeat(&master, "a", 4, &[]).await;
    let id = submit(&master, &json!({"cmd": ["true"]})).await;
    assert_eq!(show(&master, &id).await["host"], "a");
    let removed = client()
        .delete(master.url("/api/hosts/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), StatusCode::NO_CONTENT);
    assert_eq!(hosts(&master).await["hosts"], json!([]));
    assert_eq!(show(&master, &id).await["state"], "queued");
    let (status, body) = json_of(
        client()
            .delete(master.url("/api/hosts/a"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "no host a");
    // It comes back by itself: a heartbeat registers it again.
    assert_eq!(offered(&heartbeat(&master, "a", 4, &[]).await), [id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_sent_twice_is_kept_once_and_a_late_one_never_moves_a_process_back() {
    let data = tempfile::tempdir().unwrap();
    let master = Master::start(data.path(), &[]).await;
    let id = "resent";
    let running = json!({"at": "2026-11-28T01:02:03Z", "state": "running", "pid": 9});
    let setup = json!({"at": "2026-11-28T01:02:02Z", "state": "setup"});
    for state in [&running, &running, &setup, &running] {
        assert_eq!(
            report(&master, id, state.clone()).await,
            StatusCode::NO_CONTENT
        );
    }
    let process = show(&master, id).await;
    assert_eq!(process["state"], "running");
    assert_eq!(process["pid"], 9);
    assert_eq!(state_names(&process), ["running", "setup"]);
}

/// A private PostgreSQL server and a new database on it.
async fn postgres() -> (testbed::postgres::PostgresServer, String) {
    tokio::task::spawn_blocking(|| {
        let server = testbed::postgres::PostgresServer::start().unwrap();
        let url = server.create_database().unwrap();
        (server, url)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_the_master_schedules_records_and_keeps_what_it_acknowledged() {
    let (_server, database) = postgres().await;
    let data = tempfile::tempdir().unwrap();
    let master = Master::start(data.path(), &["--database", &database]).await;
    heartbeat(&master, "a", 2, &[]).await;
    let id = submit(&master, &json!({"name": "pg", "cmd": ["false"]})).await;
    assert_eq!(
        offered(&heartbeat(&master, "a", 2, &[]).await),
        std::slice::from_ref(&id)
    );
    for state in [
        json!({"at": "2026-11-28T01:02:03Z", "state": "running", "pid": 77}),
        json!({"at": "2026-11-28T01:02:03Z", "state": "running", "pid": 77}),
        json!({"at": "2026-11-28T01:02:04Z", "state": "failed", "exit_code": 1, "reason": "exit status 1"}),
    ] {
        assert_eq!(report(&master, &id, state).await, StatusCode::NO_CONTENT);
    }
    let log = client()
        .put(master.url(&format!("/api/processes/{id}/log")))
        .body("it failed\n")
        .send()
        .await
        .unwrap();
    assert_eq!(log.status(), StatusCode::NO_CONTENT);
    master.kill().await;

    let master = Master::start(data.path(), &["--database", &database]).await;
    let process = show(&master, &id).await;
    assert_eq!(process["state"], "failed");
    assert_eq!(process["exit_code"], 1);
    assert_eq!(process["host"], "a");
    assert_eq!(process["has_log"], true);
    assert_eq!(state_names(&process), ["running", "failed"]);
    assert_eq!(hosts(&master).await["hosts"][0]["name"], "a");
    let (status, body) = json_of(
        client()
            .post(master.url(&format!("/api/processes/{id}/kill")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_masters_on_one_postgresql_offer_each_of_twenty_processes_to_one_host_once() {
    let (_server, database) = postgres().await;
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let masters = [
        Master::start(one.path(), &["--database", &database]).await,
        Master::start(two.path(), &["--database", &database]).await,
    ];
    // Each host heartbeats to its own master.
    heartbeat(&masters[0], "a", 20, &[]).await;
    heartbeat(&masters[1], "b", 20, &[]).await;

    // Twenty submits, ten to each master, all at once, while both hosts
    // heartbeat (each heartbeat schedules too).
    let submits = futures_util::future::join_all((0..20).map(|n| {
        let master = &masters[n % 2];
        async move { submit(master, &json!({"name": format!("job{n}"), "cmd": ["true"]})).await }
    }));
    let beats = async {
        let mut taken: [Vec<String>; 2] = Default::default();
        for _ in 0..40 {
            for (n, host) in ["a", "b"].into_iter().enumerate() {
                let known: Vec<&str> = taken[n].iter().map(String::as_str).collect();
                let offers = offered(&heartbeat(&masters[n], host, 20, &known).await);
                taken[n].extend(offers);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        taken
    };
    let (ids, taken) = tokio::join!(submits, beats);
    // The ones submitted after the last beat: one more round.
    let mut taken = taken;
    for (n, host) in ["a", "b"].into_iter().enumerate() {
        let known: Vec<&str> = taken[n].iter().map(String::as_str).collect();
        let offers = offered(&heartbeat(&masters[n], host, 20, &known).await);
        taken[n].extend(offers);
    }
    let mut all: Vec<&String> = taken.iter().flatten().collect();
    all.sort();
    let mut submitted: Vec<&String> = ids.iter().collect();
    submitted.sort();
    assert_eq!(all, submitted, "each process offered once, to one host");
    assert!(
        !taken[0].is_empty() && !taken[1].is_empty(),
        "both hosts got work: {taken:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_master_on_the_same_data_directory_refuses_to_start() {
    let data = tempfile::tempdir().unwrap();
    let _master = Master::start(data.path(), &[]).await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_dadd"))
        .arg("master")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(data.path())
        .env("DADD_LOG", "warn")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "another master uses the data directory {} (pid ",
            data.path().display()
        )),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_other_sites_cannot_call_the_master() {
    let data = tempfile::tempdir().unwrap();
    let master = Master::start(data.path(), &[]).await;
    let submit_from = |origin: Option<&str>, host: Option<String>| {
        let mut request = client()
            .post(master.url("/api/processes"))
            // What a form or a `fetch` without a preflight can send.
            .header("content-type", "text/plain")
            .body(r#"{"cmd": "true"}"#);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        if let Some(host) = host {
            request = request.header("host", host);
        }
        request.send()
    };

    let (status, body) = json_of(
        submit_from(Some("https://evil.example"), None)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body["error"],
        format!(
            "a page from https://evil.example cannot call this master: only its own page (127.0.0.1:{}) can",
            master.port
        )
    );
    // DNS rebinding: the other site's name, resolving to 127.0.0.1.
    let rebound = format!("evil.example:{}", master.port);
    let (status, body) = json_of(
        submit_from(Some(&format!("http://{rebound}")), Some(rebound.clone()))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("answers only to a loopback address"),
        "{body}"
    );
    let kill = client()
        .post(master.url("/api/processes/p-1/kill"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(kill.status(), StatusCode::FORBIDDEN);

    // Its own page, and clients that are not browsers.
    let own = format!("http://127.0.0.1:{}", master.port);
    assert_eq!(
        submit_from(Some(&own), None).await.unwrap().status(),
        StatusCode::CREATED
    );
    assert_eq!(
        submit_from(None, Some(format!("localhost:{}", master.port)))
            .await
            .unwrap()
            .status(),
        StatusCode::CREATED
    );
}

/// A heartbeat of a given worker instance: its status and body.
async fn heartbeat_of(
    master: &Master,
    host: &str,
    instance: &str,
    known: &[&str],
) -> (StatusCode, Value) {
    json_of(
        client()
            .post(master.url(&format!("/api/hosts/{host}/heartbeat")))
            .header("content-type", "application/json")
            .body(json!({"max_processes": 2, "known": known, "instance": instance}).to_string())
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_worker_under_a_live_hosts_name_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let master = Master::start(
        data.path(),
        &["--heartbeat-every", "100ms", "--host-timeout", "600ms"],
    )
    .await;
    let (status, reply) = heartbeat_of(&master, "a", "first", &[]).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["max_log_bytes"], 16 * 1024 * 1024);
    let (status, body) = heartbeat_of(&master, "a", "clone", &[]).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("host a is up as another worker"),
        "{body}"
    );
    // Once the first one is down, the name is free.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (status, body) = heartbeat_of(&master, "a", "clone", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_process_its_live_host_no_longer_knows_fails_saying_why() {
    let data = tempfile::tempdir().unwrap();
    let master = Master::start(data.path(), &[]).await;
    heartbeat(&master, "a", 2, &[]).await;
    let id = submit(&master, &json!({"cmd": ["sleep", "100"]})).await;
    assert_eq!(
        offered(&heartbeat(&master, "a", 2, &[]).await),
        std::slice::from_ref(&id)
    );
    report(
        &master,
        &id,
        json!({"at": "2026-11-28T01:02:03Z", "state": "running", "pid": 4242}),
    )
    .await;
    heartbeat(&master, "a", 2, &[&id]).await;
    assert_eq!(show(&master, &id).await["state"], "running");
    // Its state directory wiped, the worker lists nothing.
    heartbeat(&master, "a", 2, &[]).await;
    let process = show(&master, &id).await;
    assert_eq!(process["state"], "failed");
    assert!(
        process["reason"]
            .as_str()
            .unwrap()
            .starts_with("its host a no longer knows it"),
        "{process}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_of_a_lost_process_waits_for_its_host() {
    let data = tempfile::tempdir().unwrap();
    let master = Master::start(
        data.path(),
        &["--heartbeat-every", "100ms", "--host-timeout", "500ms"],
    )
    .await;
    heartbeat(&master, "a", 2, &[]).await;
    let id = submit(&master, &json!({"cmd": ["sleep", "100"]})).await;
    offered(&heartbeat(&master, "a", 2, &[]).await);
    report(
        &master,
        &id,
        json!({"at": "2026-11-28T01:02:03Z", "state": "running", "pid": 4242}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (status, body) = json_of(
        client()
            .post(master.url(&format!("/api/processes/{id}/kill")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["state"], "lost", "it may still run: not failed yet");
    let reply = heartbeat(&master, "a", 2, &[&id]).await;
    assert_eq!(reply["kill"], json!([id]), "killed once its host is back");
}
