//! The cluster, end to end: real `dadd master`s (on SQLite, or two on one
//! private PostgreSQL), real `dadd worker`s starting real detached runners, a
//! real SMTP server, and `dadd up` driven by the `dadd` CLI.
//!
//! What it proves, as a user sees it through the master's API and the CLI:
//! submitted specs spread over the live workers and each runs once to
//! `success`; a failure's log is at the master and one mail is sent; a worker
//! stopped for good gives the work it had not started to another once the host
//! timeout passes; two masters sharing one PostgreSQL run every process once and
//! list each other's; and `dadd up` alone runs a spec that downloads a file put
//! in its file store.
//!
//! Every test has its own directories (data, state, caches, run directories,
//! HOME and XDG), its own ports and servers, kills what it started when it ends,
//! and waits for the detached runners it caused to be gone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testbed::smtp::{SmtpOptions, SmtpServer};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

/// The master's intervals in these tests: workers heartbeat ten times a second,
/// and one silent for a second is down.
const FAST: [&str; 4] = ["--heartbeat-every", "100ms", "--host-timeout", "1s"];

/// A test's directories, all under one temporary directory: HOME and the XDG
/// directories, each master's and worker's own, `out` (what commands write).
struct Bed {
    root: tempfile::TempDir,
}

impl Bed {
    fn new() -> Bed {
        let bed = Bed {
            root: tempfile::Builder::new()
                .prefix("dadd-cluster-")
                .tempdir()
                .unwrap(),
        };
        for dir in ["home", "tmp", "out"] {
            std::fs::create_dir(bed.path(dir)).unwrap();
        }
        bed
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    fn out(&self) -> String {
        self.path("out").display().to_string()
    }

    /// `dadd ARGS...` with HOME, XDG_* and TMPDIR in the bed and no DADD_*
    /// setting of the caller's; killed when dropped.
    fn dadd(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_dadd"));
        command
            .args(args)
            .env("HOME", self.path("home"))
            .env("XDG_DATA_HOME", self.path("home/.local/share"))
            .env("XDG_STATE_HOME", self.path("home/.local/state"))
            .env("XDG_CACHE_HOME", self.path("home/.cache"))
            .env("XDG_CONFIG_HOME", self.path("home/.config"))
            .env("TMPDIR", self.path("tmp"))
            .env("DADD_LOG", "info")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        for variable in [
            "DADD_TOKEN",
            "DADD_MASTER",
            "DADD_CONFIG",
            "DADD_DATA_DIR",
            "DADD_STATE_DIR",
            "DADD_CACHE_DIR",
            "DADD_REDIS",
            "DADD_DATABASE",
        ] {
            command.env_remove(variable);
        }
        command
    }

    /// `dadd ARGS...` to its end: its standard output, after checking that it
    /// succeeded.
    async fn cli(&self, args: &[&str]) -> String {
        let output = tokio::time::timeout(Duration::from_secs(30), self.dadd(args).output())
            .await
            .unwrap_or_else(|_| panic!("dadd {args:?} did not end"))
            .unwrap();
        assert!(
            output.status.success(),
            "dadd {args:?}: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// The lines the commands appended to `out/NAME`, sorted.
    fn lines_of(&self, name: &str) -> Vec<String> {
        let text = std::fs::read_to_string(self.path(&format!("out/{name}"))).unwrap_or_default();
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        lines.sort();
        lines
    }

    /// The processes this test's runs left: runners (`dadd run` with paths of
    /// the bed on their command line) and commands (working in a run
    /// directory, which is in the bed's TMPDIRs).
    fn leftovers(&self) -> Vec<String> {
        let root = self.root.path().canonicalize().unwrap();
        let mut left = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == std::process::id() || !alive(pid) {
                continue;
            }
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let args: Vec<String> = cmdline
                .split(|byte| *byte == 0)
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .collect();
            let runner = args.get(1).is_some_and(|arg| arg == "run")
                && args.iter().any(|arg| Path::new(arg).starts_with(&root));
            let in_run_dir = std::fs::read_link(entry.path().join("cwd"))
                .is_ok_and(|cwd| cwd.starts_with(&root));
            if runner || in_run_dir {
                left.push(format!("{pid}: {}", args.join(" ")));
            }
        }
        left
    }

    /// Waits until every runner and command of this test has ended.
    async fn runs_are_done(&self) {
        eventually(15, "the runners and their commands to end", async || {
            let left = self.leftovers();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:#?}"))
            }
        })
        .await;
    }
}

/// Whether `pid` is a process that has not ended (a zombie has).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

/// Polls `probe` until it gives `Ok`, for at most `seconds`; on time out, fails
/// with what it last gave.
async fn eventually<T>(
    seconds: u64,
    what: &str,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) => assert!(
                Instant::now() < deadline,
                "timed out after {seconds} s waiting for {what}; last seen: {last}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads `stdout` line by line until `wanted` says it has what it needs,
/// for at most 30 s; the lines read.
async fn read_lines(
    stdout: &mut BufReader<ChildStdout>,
    what: &str,
    mut wanted: impl FnMut(&[String]) -> bool,
) -> Vec<String> {
    let mut lines = Vec::new();
    let reading = async {
        while !wanted(&lines) {
            let mut line = String::new();
            if stdout.read_line(&mut line).await.unwrap() == 0 {
                break;
            }
            lines.push(line.trim_end().to_owned());
        }
    };
    tokio::time::timeout(Duration::from_secs(30), reading)
        .await
        .unwrap_or_else(|_| panic!("{what}: no such output in 30 s"));
    lines
}

/// A running `dadd master`, killed when dropped.
struct MasterProcess {
    _child: Child,
    _stdout: BufReader<ChildStdout>,
    url: String,
}

impl MasterProcess {
    /// `dadd master --listen 127.0.0.1:PORT --data-dir BED/NAME ARGS...`, its
    /// log in BED/NAME.log, once it printed the URL it listens on.
    async fn start(bed: &Bed, name: &str, args: &[&str]) -> MasterProcess {
        let port = testbed::net::free_port().unwrap();
        let listen = format!("127.0.0.1:{port}");
        let log = bed.path(&format!("{name}.log"));
        let mut child = bed
            .dadd(&["master", "--listen", &listen])
            .arg("--data-dir")
            .arg(bed.path(name))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let lines = read_lines(&mut stdout, "the master's URL", |lines| !lines.is_empty()).await;
        let url = format!("http://{listen}");
        assert_eq!(
            lines,
            std::slice::from_ref(&url),
            "it prints the URL it listens on; its log: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        MasterProcess {
            _child: child,
            _stdout: stdout,
            url,
        }
    }
}

/// A running `dadd worker`, killed when dropped (its runners are not).
struct WorkerProcess {
    child: Child,
    log: PathBuf,
}

impl WorkerProcess {
    /// `dadd worker --master URL --name NAME --state-dir BED/NAME/state
    /// --cache-dir BED/NAME/cache ARGS...`, with TMPDIR (where its runs go) in
    /// BED/NAME/tmp and its log in BED/NAME.log.
    fn start(bed: &Bed, name: &str, master: &str, args: &[&str]) -> WorkerProcess {
        let tmp = bed.path(&format!("{name}/tmp"));
        std::fs::create_dir_all(&tmp).unwrap();
        let log = bed.path(&format!("{name}.log"));
        let child = bed
            .dadd(&["worker", "--master", master, "--name", name])
            .arg("--state-dir")
            .arg(bed.path(&format!("{name}/state")))
            .arg("--cache-dir")
            .arg(bed.path(&format!("{name}/cache")))
            .args(args)
            .env("TMPDIR", &tmp)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        WorkerProcess { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Sends SIGTERM to `child`.
fn terminate(child: &Child) {
    let pid = i32::try_from(child.id().expect("it has not been waited for")).unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
}

/// `GET URL`: its JSON body, after checking it is a 200.
async fn get_json(url: &str) -> Value {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, 200, "GET {url}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("GET {url}: not JSON: {text:?}"))
}

/// `POST MASTER/api/processes` with `spec`: the new process's id.
async fn submit(master: &str, spec: &Value) -> String {
    let response = reqwest::Client::new()
        .post(format!("{master}/api/processes"))
        .header("content-type", "application/json")
        .body(spec.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, 201, "submitting {spec}: {text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    body["id"].as_str().unwrap().to_owned()
}

/// `GET MASTER/api/processes/ID`.
async fn show(master: &str, id: &str) -> Value {
    get_json(&format!("{master}/api/processes/{id}")).await
}

/// `GET MASTER/api/processes`: the processes by id.
async fn list(master: &str) -> BTreeMap<String, Value> {
    let list = get_json(&format!("{master}/api/processes")).await;
    list["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|process| (process["id"].as_str().unwrap().to_owned(), process.clone()))
        .collect()
}

/// `GET MASTER/api/hosts`: the hosts by name.
async fn hosts(master: &str) -> BTreeMap<String, Value> {
    let hosts = get_json(&format!("{master}/api/hosts")).await;
    hosts["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|host| (host["name"].as_str().unwrap().to_owned(), host.clone()))
        .collect()
}

/// Waits until the master lists each of `names` as up.
async fn wait_for_hosts(master: &str, names: &[&str]) {
    eventually(20, "the workers to register", async || {
        let hosts = hosts(master).await;
        let up: Vec<&str> = names
            .iter()
            .copied()
            .filter(|name| hosts.get(*name).is_some_and(|host| host["up"] == true))
            .collect();
        if up == names {
            Ok(())
        } else {
            Err(format!("{hosts:?}"))
        }
    })
    .await;
}

/// Waits until every process of `ids` is in `state` at the master; their
/// details.
async fn wait_for_all(master: &str, ids: &[String], state: &str, seconds: u64) -> Vec<Value> {
    eventually(
        seconds,
        &format!("{} processes to reach {state}", ids.len()),
        async || {
            let processes = list(master).await;
            // An end is final: no need to wait out the deadline.
            for id in ids {
                let process = processes.get(id).unwrap_or(&Value::Null);
                assert!(
                    !matches!(process["state"].as_str(), Some("success" | "failed"))
                        || process["state"] == state,
                    "{id} ended otherwise: {process}"
                );
            }
            let behind: Vec<String> = ids
                .iter()
                .filter(|id| {
                    processes
                        .get(*id)
                        .is_none_or(|process| process["state"] != state)
                })
                .map(|id| format!("{id}: {}", processes.get(id).unwrap_or(&Value::Null)))
                .collect();
            if behind.is_empty() {
                Ok(())
            } else {
                Err(format!("{behind:#?}"))
            }
        },
    )
    .await;
    futures_util::future::join_all(ids.iter().map(|id| show(master, id))).await
}

/// The names of the states in a process's history, in order.
fn history(process: &Value) -> Vec<String> {
    process["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|state| state["state"].as_str().unwrap().to_owned())
        .collect()
}

/// A spec that sleeps a moment, then appends `tag` to `out/ran`.
fn short_spec(bed: &Bed, tag: &str) -> Value {
    json!({
        "name": tag,
        "cmd": ["sh", "-c", "sleep 0.3; echo \"$TAG\" >> \"$OUT/ran\""],
        "env": {"OUT": bed.out(), "TAG": tag},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_specs_spread_over_two_workers_all_succeed() {
    let bed = Bed::new();
    let master = MasterProcess::start(&bed, "master", &FAST).await;
    let _w1 = WorkerProcess::start(&bed, "w1", &master.url, &["--max-processes", "3"]);
    let _w2 = WorkerProcess::start(&bed, "w2", &master.url, &["--max-processes", "3"]);
    wait_for_hosts(&master.url, &["w1", "w2"]).await;

    let tags: Vec<String> = (0..10).map(|n| format!("job-{n}")).collect();
    let mut ids = Vec::new();
    for tag in &tags {
        ids.push(submit(&master.url, &short_spec(&bed, tag)).await);
    }
    let processes = wait_for_all(&master.url, &ids, "success", 25).await;

    let mut ran_on: BTreeMap<String, usize> = BTreeMap::new();
    for process in &processes {
        assert_eq!(
            history(process),
            ["init", "setup", "running", "success"],
            "one run, one `running`: {process}"
        );
        assert_eq!(process["exit_code"], 0, "{process}");
        *ran_on
            .entry(process["host"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(
        ran_on.keys().collect::<Vec<_>>(),
        ["w1", "w2"],
        "both hosts ran some: {ran_on:?}"
    );
    let mut expected = tags.clone();
    expected.sort();
    assert_eq!(bed.lines_of("ran"), expected, "each command ran once");
    let hosts = hosts(&master.url).await;
    for name in ["w1", "w2"] {
        assert_eq!(hosts[name]["up"], true, "{hosts:?}");
        assert_eq!(hosts[name]["max_processes"], 3, "{hosts:?}");
        assert_eq!(hosts[name]["processes"], json!([]), "{hosts:?}");
    }
    bed.runs_are_done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_spec_has_its_log_at_the_master_and_one_mail() {
    let bed = Bed::new();
    let smtp = tokio::task::spawn_blocking(|| SmtpServer::start(SmtpOptions::plain()).unwrap())
        .await
        .unwrap();
    let config = bed.path("host.toml");
    std::fs::write(
        &config,
        format!(
            "[smtp]\nserver = \"127.0.0.1\"\nport = {}\nfrom = \"dadd@example.com\"\nto = [\"ops@example.com\"]\ntimeout = \"5s\"\n",
            smtp.port()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let master = MasterProcess::start(&bed, "master", &FAST).await;
    let _w1 = WorkerProcess::start(&bed, "w1", &master.url, &["--config", config]);
    let _w2 = WorkerProcess::start(&bed, "w2", &master.url, &["--config", config]);
    wait_for_hosts(&master.url, &["w1", "w2"]).await;

    let id = submit(
        &master.url,
        &json!({
            "name": "breaks",
            "cmd": ["sh", "-c", "echo some output; echo the-last-words >&2; exit 3"],
        }),
    )
    .await;
    let process = wait_for_all(&master.url, std::slice::from_ref(&id), "failed", 25)
        .await
        .remove(0);
    assert_eq!(process["exit_code"], 3, "{process}");
    assert_eq!(
        history(&process),
        ["init", "setup", "running", "failed"],
        "{process}"
    );
    let process = eventually(10, "the log to reach the master", async || {
        let process = show(&master.url, &id).await;
        if process["has_log"] == true {
            Ok(process)
        } else {
            Err(process.to_string())
        }
    })
    .await;
    let response = reqwest::get(format!("{}/api/processes/{id}/log", master.url))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let log = response.text().await.unwrap();
    assert!(log.contains("some output"), "{log:?}");
    assert!(log.contains("the-last-words"), "{log:?}");

    let mails = eventually(15, "the failure's mail", async || {
        let mails = smtp.messages().unwrap();
        if mails.is_empty() {
            Err(smtp.log_text())
        } else {
            Ok(mails)
        }
    })
    .await;
    let mail = &mails[0];
    assert_eq!(mail.rcpt_tos, ["ops@example.com"]);
    mail.assert_text_contains(&["the-last-words", "breaks", "exited with status 3"]);
    // A second mail (from the other worker's runner, or sent again) would come
    // within this.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        smtp.messages().unwrap().len(),
        1,
        "one failure, one mail (ran on {})",
        process["host"]
    );
    bed.runs_are_done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_for_good_gives_its_unstarted_work_to_the_other() {
    let bed = Bed::new();
    // A host timeout of 2 s: room for stopping w1 and submitting while it
    // still counts as live, on a busy machine.
    let master = MasterProcess::start(
        &bed,
        "master",
        &["--heartbeat-every", "100ms", "--host-timeout", "2s"],
    )
    .await;
    let mut w1 = WorkerProcess::start(&bed, "w1", &master.url, &["--max-processes", "3"]);
    let _w2 = WorkerProcess::start(&bed, "w2", &master.url, &["--max-processes", "3"]);
    wait_for_hosts(&master.url, &["w1", "w2"]).await;

    terminate(&w1.child);
    let status = tokio::time::timeout(Duration::from_secs(10), w1.child.wait())
        .await
        .expect("w1 stops on SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0), "{}", w1.log());
    assert!(w1.log().contains("worker stopped"), "{}", w1.log());

    // Right away: w1's last heartbeat is recent, so it still counts as live.
    let tags: Vec<String> = (0..6).map(|n| format!("job-{n}")).collect();
    let mut ids = Vec::new();
    for tag in &tags {
        ids.push(submit(&master.url, &short_spec(&bed, tag)).await);
    }
    let right_after = list(&master.url).await;
    let given_to_w1: Vec<&String> = ids
        .iter()
        .filter(|id| right_after[*id]["host"] == "w1")
        .collect();
    assert!(
        !given_to_w1.is_empty(),
        "while w1 still counts as live, some work is assigned to it: {right_after:#?}"
    );
    for id in &given_to_w1 {
        assert_eq!(right_after[*id]["state"], "assigned", "{right_after:#?}");
    }

    let processes = wait_for_all(&master.url, &ids, "success", 25).await;
    for process in &processes {
        assert_eq!(process["host"], "w2", "{process}");
        assert_eq!(
            history(process),
            ["init", "setup", "running", "success"],
            "{process}"
        );
    }
    let mut expected = tags.clone();
    expected.sort();
    assert_eq!(bed.lines_of("ran"), expected, "each command ran once");
    let records = std::fs::read_dir(bed.path("w1/state/processes"))
        .unwrap()
        .count();
    assert_eq!(records, 0, "nothing was started on w1");

    let hosts = eventually(10, "w1 to be down", async || {
        let hosts = hosts(&master.url).await;
        if hosts["w1"]["up"] == false {
            Ok(hosts)
        } else {
            Err(format!("{hosts:?}"))
        }
    })
    .await;
    assert_eq!(hosts["w1"]["processes"], json!([]), "{hosts:?}");
    assert_eq!(hosts["w2"]["up"], true, "{hosts:?}");
    bed.runs_are_done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_masters_on_one_postgresql_with_a_worker_each_run_twenty_processes_once() {
    let bed = Bed::new();
    let (_postgres, database) = tokio::task::spawn_blocking(|| {
        let server = testbed::postgres::PostgresServer::start().unwrap();
        let url = server.create_database().unwrap();
        (server, url)
    })
    .await
    .unwrap();
    let mut args = vec!["--database", database.as_str()];
    args.extend(FAST);
    let m1 = MasterProcess::start(&bed, "m1", &args).await;
    let m2 = MasterProcess::start(&bed, "m2", &args).await;
    let _w1 = WorkerProcess::start(&bed, "w1", &m1.url, &["--max-processes", "5"]);
    let _w2 = WorkerProcess::start(&bed, "w2", &m2.url, &["--max-processes", "5"]);
    wait_for_hosts(&m1.url, &["w1", "w2"]).await;

    let tags: Vec<String> = (0..20).map(|n| format!("job-{n:02}")).collect();
    let masters = [m1.url.as_str(), m2.url.as_str()];
    let ids: Vec<String> =
        futures_util::future::join_all(tags.iter().enumerate().map(|(n, tag)| {
            let spec = json!({
                "name": tag,
                "cmd": ["sh", "-c", "sleep 0.2; echo \"$TAG\" >> \"$OUT/ran\""],
                "env": {"OUT": bed.out(), "TAG": tag},
            });
            let master = masters[n % 2];
            async move { submit(master, &spec).await }
        }))
        .await;
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 20, "{ids:?}");

    let processes = wait_for_all(&m1.url, &ids, "success", 25).await;
    let mut ran_on: BTreeMap<String, usize> = BTreeMap::new();
    for process in &processes {
        assert_eq!(
            history(process),
            ["init", "setup", "running", "success"],
            "one run, one `running`: {process}"
        );
        *ran_on
            .entry(process["host"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(
        ran_on.keys().collect::<Vec<_>>(),
        ["w1", "w2"],
        "both workers ran some: {ran_on:?}"
    );
    let mut expected = tags.clone();
    expected.sort();
    assert_eq!(bed.lines_of("ran"), expected, "each command ran once");

    let submitted: BTreeSet<&String> = ids.iter().collect();
    for master in masters {
        let listed = list(master).await;
        assert_eq!(
            listed.keys().collect::<BTreeSet<_>>(),
            submitted,
            "{master} lists the processes of both masters"
        );
        assert!(
            listed.values().all(|process| process["state"] == "success"),
            "{listed:#?}"
        );
    }
    bed.runs_are_done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dadd_up_runs_a_submitted_spec_that_downloads_a_file_from_the_master() {
    let bed = Bed::new();
    let port = testbed::net::free_port().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let url = format!("http://{listen}");
    let log = bed.path("up.log");
    let mut up = bed
        .dadd(&["up", "--listen", &listen, "--max-processes", "2"])
        .arg("--data-dir")
        .arg(bed.path("data"))
        .arg("--state-dir")
        .arg(bed.path("state"))
        .arg("--cache-dir")
        .arg(bed.path("cache"))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(up.stdout.take().unwrap());
    let lines = read_lines(&mut stdout, "dadd up's addresses", |lines| {
        lines.iter().any(|line| line.starts_with("master:"))
            && lines.iter().any(|line| line.starts_with("web page:"))
    })
    .await;
    let line = |prefix: &str| {
        lines
            .iter()
            .find(|line| line.starts_with(prefix))
            .cloned()
            .unwrap_or_else(|| {
                panic!(
                    "no {prefix:?} line in {lines:?}; its log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
    };
    assert_eq!(line("master:"), format!("master:   {url}"));
    assert_eq!(line("web page:"), format!("web page: {url}/"));
    let page = reqwest::get(format!("{url}/")).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"),
        "{:?}",
        page.headers()
    );

    let words = bed.path("words.txt");
    std::fs::write(&words, "the quick brown fox jumps\nover the dog\n").unwrap();
    let put = bed
        .cli(&[
            "put",
            words.to_str().unwrap(),
            "words.txt",
            "--master",
            &url,
        ])
        .await;
    let file_url = format!("{url}/files/words.txt");
    assert_eq!(put.trim(), file_url);

    let spec = bed.path("count.json");
    std::fs::write(
        &spec,
        json!({
            "name": "count-words",
            "cmd": ["sh", "-c", "wc -w < words.txt > \"$OUT/count\""],
            "env": {"OUT": bed.out()},
            "download_urls": {"words.txt": file_url},
        })
        .to_string(),
    )
    .unwrap();
    let id = bed
        .cli(&["submit", spec.to_str().unwrap(), "--master", &url])
        .await
        .trim()
        .to_owned();
    assert!(
        !id.is_empty() && !id.contains(char::is_whitespace),
        "{id:?}"
    );

    let process = eventually(25, "the spec to succeed", async || {
        let ps = bed.cli(&["ps", "--json", "--master", &url]).await;
        let ps: Value = serde_json::from_str(&ps).unwrap();
        let process = ps["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|process| process["id"] == id.as_str())
            .cloned()
            .unwrap_or(Value::Null);
        match process["state"].as_str() {
            Some("success") => Ok(process),
            Some("failed") => panic!("it failed: {process}"),
            _ => Err(process.to_string()),
        }
    })
    .await;
    assert_eq!(process["name"], "count-words");
    assert_eq!(process["exit_code"], 0);
    assert_eq!(
        std::fs::read_to_string(bed.path("out/count"))
            .unwrap()
            .trim(),
        "8",
        "the command read the file it downloaded"
    );
    let table = bed.cli(&["ps", "--master", &url]).await;
    assert!(
        table.lines().any(|row| row.starts_with(&id)
            && row.contains("count-words")
            && row.contains("success")),
        "{table}"
    );

    bed.runs_are_done().await;
    terminate(&up);
    let status = tokio::time::timeout(Duration::from_secs(10), up.wait())
        .await
        .expect("dadd up stops on SIGTERM")
        .unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}
