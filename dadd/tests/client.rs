//! The master's clients, end to end: the real `dadd` CLI (submit, ps, show,
//! logs, put, hosts, kill) against the real `dadd master` on a free loopback
//! port, and the master's web page in headless Chromium.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

mod common;

/// A running `dadd master`, killed when dropped.
struct Master {
    _child: tokio::process::Child,
    url: String,
    token: Option<String>,
}

impl Master {
    /// `dadd master --listen 127.0.0.1:PORT --data-dir DATA_DIR [--token TOKEN]`,
    /// once it accepts connections.
    async fn start(data_dir: &Path, token: Option<&str>) -> Master {
        Master::start_with(data_dir, token, &[]).await
    }

    /// [`Master::start`] with more arguments.
    async fn start_with(data_dir: &Path, token: Option<&str>, args: &[&str]) -> Master {
        let port = testbed::net::free_port().unwrap();
        let mut command = common::master(data_dir, port, args);
        if let Some(token) = token {
            command.arg("--token").arg(token);
        }
        let child = command.spawn().unwrap();
        common::wait_for_port(port).await;
        Master {
            _child: child,
            url: format!("http://127.0.0.1:{port}"),
            token: token.map(str::to_owned),
        }
    }

    /// The API at `path`, with the token when the master has one.
    fn api(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = reqwest::Client::new().request(method, format!("{}{path}", self.url));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Reports a state of process `id`, as a runner does.
    async fn report(&self, id: &str, state: Value) {
        let response = self
            .api(
                reqwest::Method::POST,
                &format!("/api/processes/{id}/states"),
            )
            .header("content-type", "application/json")
            .body(state.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204, "{}", response.text().await.unwrap());
    }

    /// Puts the log of process `id`, as a runner does after a failure.
    async fn put_log(&self, id: &str, log: &str) {
        let response = self
            .api(reqwest::Method::PUT, &format!("/api/processes/{id}/log"))
            .body(log.to_owned())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204);
    }

    /// `dadd ARGS...` with this master in DADD_MASTER and its token in
    /// DADD_TOKEN.
    async fn dadd(&self, args: &[&str]) -> Cli {
        self.dadd_reading(args, None).await
    }

    /// `dadd ARGS...` as [`Master::dadd`], with `stdin` on its standard input.
    async fn dadd_reading(&self, args: &[&str], stdin: Option<&str>) -> Cli {
        let mut env = vec![("DADD_MASTER", self.url.as_str())];
        if let Some(token) = &self.token {
            env.push(("DADD_TOKEN", token));
        }
        dadd(args, &env, stdin).await
    }

    /// `dadd submit -` with `spec` on its standard input: the id it printed.
    async fn submit(&self, spec: &str) -> String {
        let id = self.dadd_reading(&["submit", "-"], Some(spec)).await.ok();
        let id = id.trim();
        assert!(
            !id.is_empty() && !id.contains(char::is_whitespace),
            "{id:?}"
        );
        id.to_owned()
    }
}

/// What a run of the CLI printed, and how it exited.
struct Cli {
    output: Output,
}

impl Cli {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// Its standard output, after checking that it succeeded.
    fn ok(&self) -> String {
        assert!(
            self.output.status.success(),
            "exit {:?}; stderr: {}",
            self.output.status,
            self.stderr()
        );
        self.stdout()
    }

    /// Its standard error, after checking that it failed with status 1.
    fn failed(&self) -> String {
        assert_eq!(
            self.output.status.code(),
            Some(1),
            "stdout: {}; stderr: {}",
            self.stdout(),
            self.stderr()
        );
        self.stderr()
    }
}

/// `dadd ARGS...` with only `env` of dadd's own variables, `stdin` on its
/// standard input.
async fn dadd(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Cli {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_dadd"));
    command
        .args(args)
        .env_remove("DADD_MASTER")
        .env_remove("DADD_TOKEN")
        .env("DADD_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().unwrap();
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut pipe, text.as_bytes())
            .await
            .unwrap();
    }
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("dadd answered within a minute")
        .unwrap();
    Cli { output }
}

/// The lines of a table whose first column is `id`.
fn row<'a>(table: &'a str, id: &str) -> &'a str {
    table
        .lines()
        .find(|line| line.split_whitespace().next() == Some(id))
        .unwrap_or_else(|| panic!("no row for {id} in:\n{table}"))
}

/// The words of a table's line, with an age in seconds (`12s`) as `Ns`.
fn columns(line: &str) -> Vec<String> {
    line.split_whitespace()
        .map(|word| match word.strip_suffix('s') {
            Some(number) if !number.is_empty() && number.chars().all(|c| c.is_ascii_digit()) => {
                "Ns".to_owned()
            }
            _ => word.to_owned(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_ps_show_and_logs_print_what_the_master_has() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let master = Master::start(data.path(), None).await;
    let spec = work.path().join("hello.json");
    std::fs::write(
        &spec,
        json!({"name": "hello", "cmd": "echo hi"}).to_string(),
    )
    .unwrap();

    let submitted = master.dadd(&["submit", spec.to_str().unwrap()]).await;
    // No worker has sent a heartbeat to this master: it says the process waits.
    assert_eq!(
        submitted.stderr(),
        "dadd: warning: no worker is up: the process waits in the queue until one sends a \
         heartbeat (dadd worker, or dadd up)\n"
    );
    let hello = submitted.ok();
    let hello = hello.trim();
    assert!(!hello.is_empty() && !hello.contains(char::is_whitespace));
    let from_stdin = &master
        .submit("name: from-stdin\ncmd: [sh, -c, 'exit 3']\n")
        .await;

    master
        .report(
            hello,
            json!({"at": "2026-11-28T01:00:00Z", "state": "running", "pid": 4242}),
        )
        .await;
    master
        .report(
            hello,
            json!({"at": "2026-11-28T01:00:05Z", "state": "failed", "exit_code": 3,
                   "reason": "the command exited with status 3"}),
        )
        .await;
    master.put_log(hello, "first line\nsecond line\n").await;

    let table = master.dadd(&["ps"]).await.ok();
    let mut lines = table.lines();
    assert_eq!(
        lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
        ["ID", "NAME", "STATE", "HOST", "UPDATED", "EXIT"]
    );
    assert_eq!(
        columns(row(&table, hello)),
        [hello, "hello", "failed", "127.0.0.1", "Ns", "ago", "3"]
    );
    assert_eq!(
        columns(row(&table, from_stdin)),
        [from_stdin, "from-stdin", "queued", "-", "Ns", "ago", "-"]
    );
    let header = table.lines().next().unwrap();
    let state_column = header.find("STATE").unwrap();
    for line in table.lines().skip(1) {
        assert!(
            line[state_column..].starts_with("failed")
                || line[state_column..].starts_with("queued"),
            "the columns are aligned:\n{table}"
        );
    }

    let list: Value = serde_json::from_str(&master.dadd(&["ps", "--json"]).await.ok()).unwrap();
    let ids: Vec<&str> = list["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|process| process["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [from_stdin, hello], "newest first");

    let shown = master.dadd(&["show", hello]).await.ok();
    for expected in [
        format!("id       {hello}"),
        "name     hello".to_owned(),
        "state    failed".to_owned(),
        "pid      4242".to_owned(),
        "exit     3".to_owned(),
        "reason   the command exited with status 3".to_owned(),
        format!("log      yes: dadd logs {hello}"),
        "\"echo\",".to_owned(),
        "2026-11-28T01:00:00Z  running  pid 4242".to_owned(),
        "2026-11-28T01:00:05Z  failed   exit 3: the command exited with status 3".to_owned(),
    ] {
        assert!(shown.contains(&expected), "{expected:?} in:\n{shown}");
    }

    assert_eq!(
        master.dadd(&["logs", hello]).await.ok(),
        "first line\nsecond line\n"
    );
    let no_log = master.dadd(&["logs", from_stdin]).await.failed();
    assert!(no_log.contains("has no log"), "{no_log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_processes_and_refused_specs_are_errors_with_the_masters_message() {
    let data = tempfile::tempdir().unwrap();
    let master = Master::start(data.path(), None).await;

    let error = master.dadd(&["show", "nope"]).await.failed();
    assert_eq!(error.trim(), "dadd: showing process nope: no process nope");
    let error = master.dadd(&["logs", "nope"]).await.failed();
    assert_eq!(
        error.trim(),
        "dadd: getting the log of process nope: no process nope"
    );

    let error = master
        .dadd_reading(&["submit", "-"], Some(r#"{"cmd": []}"#))
        .await
        .failed();
    assert!(
        error.contains("submitting the spec: the master answered 400 Bad Request")
            && error.contains("cmd"),
        "{error}"
    );

    let error = master.dadd(&["show", "../etc"]).await.failed();
    assert!(error.contains("process id \"../etc\""), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_uploads_a_file_and_prints_the_url_a_spec_downloads_it_from() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let master = Master::start(data.path(), Some("s3cret")).await;
    let file = work.path().join("app.sh");
    std::fs::write(&file, "echo from the store\n").unwrap();

    let url = master.dadd(&["put", file.to_str().unwrap()]).await.ok();
    assert_eq!(url.trim(), format!("{}/files/app.sh", master.url));
    let url = master
        .dadd(&["put", file.to_str().unwrap(), "/tools/v 1/app.sh"])
        .await
        .ok();
    assert_eq!(
        url.trim(),
        format!("{}/files/tools/v%201/app.sh", master.url)
    );
    let got = master
        .api(reqwest::Method::GET, "/files/tools/v%201/app.sh")
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.text().await.unwrap(), "echo from the store\n");

    let error = master
        .dadd(&["put", file.to_str().unwrap(), "tools/../app.sh"])
        .await
        .failed();
    assert!(error.contains("file path \"tools/../app.sh\""), "{error}");
    let error = master
        .dadd(&["put", work.path().join("missing").to_str().unwrap()])
        .await
        .failed();
    assert!(
        error.contains("opening") && error.contains("missing"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_wrong_token_is_a_clear_error() {
    let data = tempfile::tempdir().unwrap();
    let master = Master::start(data.path(), Some("s3cret")).await;
    let url = master.url.as_str();

    let error = dadd(&["ps", "--master", url], &[], None).await.failed();
    assert!(
        error.contains(&format!(
            "the master at {url} refused listing the processes"
        )) && error.contains("needs a bearer token")
            && error.contains("give the cluster's token with --token or DADD_TOKEN"),
        "{error}"
    );
    let error = dadd(&["ps", "--master", url, "--token", "wrong"], &[], None)
        .await
        .failed();
    assert!(
        error.contains("the bearer token is wrong")
            && error.contains("check the token given with --token or DADD_TOKEN"),
        "{error}"
    );
    dadd(&["ps", "--master", url], &[("DADD_TOKEN", "s3cret")], None)
        .await
        .ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_that_is_not_running_is_a_clear_error() {
    let port = testbed::net::free_port().unwrap();
    let url = format!("http://127.0.0.1:{port}");
    for args in [
        vec!["ps"],
        vec!["show", "job-1"],
        vec!["hosts"],
        vec!["put", "Cargo.toml"],
    ] {
        let error = dadd(&args, &[("DADD_MASTER", &url)], None).await.failed();
        assert!(
            error.contains(&format!("cannot reach the master at {url}"))
                && error.contains(&format!("is `dadd up` or `dadd master` running at {url}?")),
            "{args:?}: {error}"
        );
    }
}

/// A worker's heartbeat, as `dadd worker` sends it: the ids offered to it.
async fn heartbeat(master: &Master, host: &str, max_processes: u32, known: &[&str]) -> Vec<String> {
    let response = master
        .api(
            reqwest::Method::POST,
            &format!("/api/hosts/{host}/heartbeat"),
        )
        .header("content-type", "application/json")
        .body(json!({"max_processes": max_processes, "known": known}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let reply: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    reply["start"]
        .as_array()
        .unwrap()
        .iter()
        .map(|offer| offer["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_lists_each_worker_up_or_down_with_its_load_and_removes_one() {
    let data = tempfile::tempdir().unwrap();
    let mut master = Master::start_with(
        data.path(),
        Some("s3cret"),
        &["--heartbeat-every", "100ms", "--host-timeout", "2s"],
    )
    .await;
    assert_eq!(
        master.dadd(&["hosts"]).await.ok(),
        "NAME  STATUS  HEARTBEAT  RUNNING\n"
    );

    heartbeat(&master, "gone-1", 4, &[]).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    heartbeat(&master, "worker-a", 2, &[]).await;
    let id = master.submit(r#"{"cmd": "sleep 60"}"#).await;
    assert_eq!(heartbeat(&master, "worker-a", 2, &[]).await, [id]);

    let table = master.dadd(&["hosts"]).await.ok();
    let lines: Vec<Vec<String>> = table.lines().map(columns).collect();
    assert_eq!(
        lines,
        [
            vec!["NAME", "STATUS", "HEARTBEAT", "RUNNING"],
            vec!["gone-1", "down", "Ns", "ago", "0/4"],
            vec!["worker-a", "up", "Ns", "ago", "1/2"],
        ],
        "{table}"
    );

    assert_eq!(
        master.dadd(&["hosts", "--remove", "gone-1"]).await.ok(),
        "removed host gone-1\n"
    );
    let table = master.dadd(&["hosts"]).await.ok();
    assert!(
        !table.contains("gone-1") && table.contains("worker-a"),
        "{table}"
    );
    let error = master
        .dadd(&["hosts", "--remove", "nowhere"])
        .await
        .failed();
    assert!(
        error.contains("removing host nowhere") && error.contains("nowhere"),
        "{error}"
    );
    master.token = None;
    let error = master.dadd(&["hosts"]).await.failed();
    assert!(error.contains("refused listing the hosts"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_ends_a_process_not_yet_started_and_hands_a_started_one_to_its_worker() {
    let data = tempfile::tempdir().unwrap();
    let master = Master::start(data.path(), None).await;

    let queued = master.submit(r#"{"cmd": "sleep 60"}"#).await;
    assert_eq!(
        master.dadd(&["kill", &queued]).await.ok(),
        format!("{queued}: failed: killed before it started\n")
    );
    let error = master.dadd(&["kill", &queued]).await.failed();
    assert!(
        error.contains(&format!(
            "killing process {queued}: the master answered 409 Conflict"
        )) && error.contains("already ended"),
        "{error}"
    );

    heartbeat(&master, "worker-a", 2, &[]).await;
    let running = master.submit(r#"{"cmd": "sleep 60"}"#).await;
    assert_eq!(
        heartbeat(&master, "worker-a", 2, &[]).await,
        std::slice::from_ref(&running)
    );
    master
        .report(
            &running,
            json!({"at": "2026-11-28T01:00:00Z", "state": "running", "pid": 4242}),
        )
        .await;
    assert_eq!(
        master.dadd(&["kill", &running]).await.ok(),
        format!("{running}: running on worker-a: its worker kills it at its next heartbeat\n")
    );

    let error = master.dadd(&["kill", "nope"]).await.failed();
    assert_eq!(error.trim(), "dadd: killing process nope: no process nope");
}

/// The DOM of `url` after its scripts ran, as headless Chromium dumps it.
async fn dump_dom(url: &str) -> String {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || testbed::chromium::dump_dom(&url))
        .await
        .unwrap()
        .unwrap_or_else(|error| panic!("Chromium: {error}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_page_lists_the_processes_and_shows_a_failed_ones_states_and_log() {
    let data = tempfile::tempdir().unwrap();
    let master = Master::start(data.path(), None).await;
    let quiet = &master.submit(r#"{"name": "quiet", "cmd": "true"}"#).await;
    let failing = &master
        .submit(r#"{"name": "<b>bold</b> job", "cmd": "false"}"#)
        .await;
    master
        .report(
            failing,
            json!({"at": "2026-11-28T01:00:00Z", "state": "running", "pid": 77}),
        )
        .await;
    master
        .report(
            failing,
            json!({"at": "2026-11-28T01:00:02Z", "state": "failed", "exit_code": 1,
                   "reason": "the command exited with status 1"}),
        )
        .await;
    master
        .put_log(failing, "it broke <script>alert(1)</script>\n")
        .await;

    let page = dump_dom(&format!("{}/", master.url)).await;
    for expected in [
        format!(r##"<a href="#{quiet}">{quiet}</a>"##),
        format!(r##"<a href="#{failing}">{failing}</a>"##),
        "<td>quiet</td>".to_owned(),
        // The name is shown as text, not as markup.
        "<td>&lt;b&gt;bold&lt;/b&gt; job</td>".to_owned(),
        r#"<td class="state-failed">failed</td>"#.to_owned(),
        r#"<td class="state-queued">queued</td>"#.to_owned(),
        r#"<p id="no-hosts" class="none">no hosts</p>"#.to_owned(),
        r#"<section id="detail" hidden="">"#.to_owned(),
    ] {
        assert!(page.contains(&expected), "{expected:?} in:\n{page}");
    }

    // A worker: the queued process is assigned to it.
    heartbeat(&master, "worker-a", 3, &[]).await;
    let detail = dump_dom(&format!("{}/#{failing}", master.url)).await;
    for expected in [
        format!(r#"<span id="detail-id">{failing}</span>"#),
        r#"<td>2026-11-28T01:00:00Z</td><td class="state-running">running</td><td>pid 77</td>"#
            .to_owned(),
        "<td>exit 1: the command exited with status 1</td>".to_owned(),
        r#"<pre id="log">it broke &lt;script&gt;alert(1)&lt;/script&gt;"#.to_owned(),
        r#"<td>worker-a</td><td class="host-up">up</td>"#.to_owned(),
        "<td>1/3</td>".to_owned(),
        r#"<p id="no-hosts" class="none" hidden="">"#.to_owned(),
    ] {
        assert!(detail.contains(&expected), "{expected:?} in:\n{detail}");
    }
    assert!(!detail.contains("<script>alert"), "{detail}");

    let without_log = dump_dom(&format!("{}/#{quiet}", master.url)).await;
    assert!(
        without_log.contains("no log (yet: it is put here when the run ends)")
            && without_log.contains("no state reported yet"),
        "{without_log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_page_is_served_without_the_token_and_asks_for_it() {
    let data = tempfile::tempdir().unwrap();
    let master = Master::start(data.path(), Some("s3cret")).await;
    master.submit(r#"{"name": "secret", "cmd": "true"}"#).await;

    let page = reqwest::get(format!("{}/", master.url)).await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");

    let dom = dump_dom(&format!("{}/", master.url)).await;
    assert!(
        dom.contains(r#"<form id="token-form">"#)
            && dom.contains("This master needs the cluster's token"),
        "the token field is shown:\n{dom}"
    );
    assert!(
        dom.contains("this master needs a bearer token"),
        "with the master's message:\n{dom}"
    );
    assert!(
        dom.contains(r#"<table id="processes">"#) && !dom.contains("<a href=\"#p-"),
        "no process is shown without the token:\n{dom}"
    );
}
