//! `dadd worker`, end to end: the real binary, real detached runners and real
//! processes, reporting to a stand-in for the master on loopback that records
//! heartbeats, offers assignments, and records the states and logs it accepts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Bed;
use serde_json::{Value, json};
use testbed::origin::{Origin, Reply};

mod common;

const HOST: &str = "test-host";

/// What the stand-in master knows.
#[derive(Default)]
struct Books {
    /// Assignments offered at each heartbeat until their last state is accepted.
    offers: Vec<Value>,
    /// Ids to kill, sent at each heartbeat.
    kill: Vec<String>,
    /// Every heartbeat received.
    heartbeats: Vec<Value>,
    /// The states accepted, by process.
    states: HashMap<String, Vec<Value>>,
    /// The logs accepted, by process.
    logs: HashMap<String, Vec<u8>>,
    /// Processes whose last state was accepted.
    ended: HashSet<String>,
    /// Whether an ended process is offered again too (a master restored from a
    /// backup).
    reoffer: bool,
    /// The status and error message heartbeats are refused with, when they are.
    refuse_heartbeats: Option<(u16, String)>,
    /// The largest log the master says it takes.
    max_log_bytes: Option<u64>,
    /// Processes whose log puts are answered only after a delay (and not kept).
    slow_logs: HashMap<String, Duration>,
    /// Processes whose log puts fail (500, and not kept).
    failing_logs: HashSet<String>,
    /// When each heartbeat came.
    heartbeat_times: Vec<Instant>,
    /// What came when: `log ID` (accepted), `log-attempt ID`, `ID STATE`.
    events: Vec<(Instant, String)>,
}

/// A stand-in for the master: `POST /api/hosts/test-host/heartbeat`,
/// `POST /api/processes/{id}/states`, `PUT /api/processes/{id}/log`, each
/// answering `status` (503 to play a failing master).
struct StandIn {
    origin: Origin,
    books: Arc<Mutex<Books>>,
    status: Arc<AtomicU16>,
}

impl StandIn {
    async fn start() -> StandIn {
        let stand_in = StandIn {
            origin: Origin::start().await.unwrap(),
            books: Arc::default(),
            status: Arc::new(AtomicU16::new(200)),
        };
        let books = Arc::clone(&stand_in.books);
        let status = Arc::clone(&stand_in.status);
        stand_in
            .origin
            .route(&format!("/api/hosts/{HOST}/heartbeat"), move |request| {
                let status = status.load(Ordering::SeqCst);
                if status != 200 {
                    return Reply::status(status);
                }
                let heartbeat: Value = serde_json::from_slice(&request.body).unwrap();
                let mut books = books.lock().unwrap();
                if let Some((status, message)) = &books.refuse_heartbeats {
                    return Reply::status(*status)
                        .header("content-type", "application/json")
                        .body(json!({"error": message}).to_string());
                }
                books.heartbeats.push(heartbeat);
                books.heartbeat_times.push(Instant::now());
                let start: Vec<Value> = books
                    .offers
                    .iter()
                    .filter(|offer| {
                        books.reoffer || !books.ended.contains(offer["id"].as_str().unwrap())
                    })
                    .cloned()
                    .collect();
                let mut reply =
                    json!({"start": start, "kill": books.kill, "heartbeat_every_ms": 100});
                if let Some(max) = books.max_log_bytes {
                    reply["max_log_bytes"] = json!(max);
                }
                Reply::ok(reply.to_string()).header("content-type", "application/json")
            });
        stand_in
    }

    fn url(&self) -> String {
        self.origin.url("/")
    }

    /// Offers `spec` as process `id` at every heartbeat until its last state is
    /// accepted (a recorded process is offered again, which the worker ignores).
    fn offer(&self, id: &str, spec: Value) {
        let books = Arc::clone(&self.books);
        let status = Arc::clone(&self.status);
        let process = id.to_owned();
        self.origin
            .route(&format!("/api/processes/{id}/states"), move |request| {
                let status = status.load(Ordering::SeqCst);
                if status != 200 {
                    return Reply::status(status);
                }
                assert_eq!(request.method.as_str(), "POST");
                let state: Value = serde_json::from_slice(&request.body).unwrap();
                let mut books = books.lock().unwrap();
                let states = books.states.entry(process.clone()).or_default();
                if states.contains(&state) {
                    // As the master does: a state sent again (its acknowledgment
                    // lost to a worker killed) is ignored.
                    return Reply::status(204);
                }
                if matches!(state["state"].as_str(), Some("success" | "failed")) {
                    books.ended.insert(process.clone());
                }
                let event = format!("{process} {}", state["state"].as_str().unwrap());
                books.events.push((Instant::now(), event));
                books.states.entry(process.clone()).or_default().push(state);
                Reply::status(204)
            });
        let books = Arc::clone(&self.books);
        let status = Arc::clone(&self.status);
        let process = id.to_owned();
        self.origin
            .route(&format!("/api/processes/{id}/log"), move |request| {
                let status = status.load(Ordering::SeqCst);
                if status != 200 {
                    return Reply::status(status);
                }
                assert_eq!(request.method.as_str(), "PUT");
                let mut books = books.lock().unwrap();
                books
                    .events
                    .push((Instant::now(), format!("log-attempt {process}")));
                if let Some(&delay) = books.slow_logs.get(&process) {
                    return Reply::status(204).delay(delay);
                }
                if books.failing_logs.contains(&process) {
                    return Reply::status(500).body("the disk is full");
                }
                books.logs.insert(process.clone(), request.body.to_vec());
                books
                    .events
                    .push((Instant::now(), format!("log {process}")));
                Reply::status(204)
            });
        self.books
            .lock()
            .unwrap()
            .offers
            .push(json!({"id": id, "spec": spec}));
    }

    fn kill(&self, id: &str) {
        self.books.lock().unwrap().kill.push(id.to_owned());
    }

    fn states(&self, id: &str) -> Vec<Value> {
        let books = self.books.lock().unwrap();
        books.states.get(id).cloned().unwrap_or_default()
    }

    fn state_names(&self, id: &str) -> Vec<String> {
        names(&self.states(id))
    }

    fn log(&self, id: &str) -> Option<Vec<u8>> {
        self.books.lock().unwrap().logs.get(id).cloned()
    }

    fn heartbeats(&self) -> Vec<Value> {
        self.books.lock().unwrap().heartbeats.clone()
    }

    /// When `event` (see [`Books::events`]) first came.
    fn when(&self, event: &str) -> Option<Instant> {
        let books = self.books.lock().unwrap();
        books
            .events
            .iter()
            .find(|(_, seen)| seen == event)
            .map(|(at, _)| *at)
    }

    /// Waits until `count` more heartbeats than now have come.
    async fn more_heartbeats(&self, count: usize) {
        let now = self.heartbeats().len();
        wait_until(10, "more heartbeats", || {
            self.heartbeats().len() >= now + count
        })
        .await;
    }
}

fn names(states: &[Value]) -> Vec<String> {
    states
        .iter()
        .map(|state| state["state"].as_str().unwrap().to_owned())
        .collect()
}

/// Here, the bed also holds the worker's state (`state`).
impl Bed {
    fn records(&self) -> Vec<String> {
        match std::fs::read_dir(self.path("state/processes")) {
            Ok(entries) => entries
                .map(|entry| entry.unwrap().file_name().into_string().unwrap())
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// A running `dadd worker`, killed (SIGKILL) when dropped; its runners are not.
struct WorkerProcess {
    child: tokio::process::Child,
    log: PathBuf,
}

impl WorkerProcess {
    /// `dadd worker --master URL --name test-host --state-dir STATE --cache-dir
    /// CACHE ARGS...`, its log in `worker-N.log` in the bed.
    fn start(bed: &Bed, master: &str, args: &[&str]) -> WorkerProcess {
        let mut n = 0;
        let log = loop {
            let log = bed.path(&format!("worker-{n}.log"));
            if !log.exists() {
                break log;
            }
            n += 1;
        };
        let file = std::fs::File::create(&log).unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dadd"))
            .arg("worker")
            .args(["--master", master, "--name", HOST])
            .arg("--state-dir")
            .arg(bed.path("state"))
            .arg("--cache-dir")
            .arg(bed.path("cache"))
            .args(args)
            .env("TMPDIR", bed.path("tmp"))
            .env("DADD_LOG", "info")
            .env_remove("DADD_TOKEN")
            .env_remove("DADD_MASTER")
            .env_remove("DADD_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        WorkerProcess { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }
}

/// Waits until `done` holds, for at most `seconds`.
async fn wait_until(seconds: u64, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie is as good as gone.
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn ended(stand_in: &StandIn, id: &str) -> bool {
    stand_in
        .state_names(id)
        .last()
        .is_some_and(|last| last == "success" || last == "failed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigned_processes_run_and_their_states_and_a_failures_log_reach_the_master() {
    let bed = Bed::new();
    let master = StandIn::start().await;
    // Each runs long enough to be in a heartbeat or two.
    master.offer(
        "ok-1",
        json!({"cmd": ["sh", "-c", "sleep 0.5; echo ran > \"$OUT/ok\""], "env": {"OUT": bed.out()}}),
    );
    master.offer(
        "fail-1",
        json!({"cmd": ["sh", "-c", "echo about to fail; sleep 0.5; exit 3"]}),
    );
    let worker = WorkerProcess::start(&bed, &master.url(), &["--max-processes", "3"]);

    wait_until(20, "both processes to end", || {
        ended(&master, "ok-1") && ended(&master, "fail-1") && master.log("fail-1").is_some()
    })
    .await;
    assert_eq!(
        master.state_names("ok-1"),
        ["init", "setup", "running", "success"]
    );
    assert_eq!(
        std::fs::read_to_string(bed.path("out/ok")).unwrap(),
        "ran\n"
    );
    let failed = master.states("fail-1");
    assert_eq!(names(&failed), ["init", "setup", "running", "failed"]);
    assert_eq!(failed[3]["exit_code"], 3);
    assert_eq!(master.log("fail-1").unwrap(), b"about to fail\n");

    // Both delivered whole: forgotten, and no longer listed as known.
    wait_until(10, "the records to go", || bed.records().is_empty()).await;
    wait_until(10, "a heartbeat without them", || {
        master
            .heartbeats()
            .last()
            .is_some_and(|beat| beat["known"] == json!([]))
    })
    .await;
    let heartbeats = master.heartbeats();
    assert!(heartbeats.iter().all(|beat| beat["max_processes"] == 3));
    assert!(
        heartbeats
            .iter()
            .any(|beat| beat["known"].as_array().unwrap().len() == 2),
        "both were listed as known while they ran: {heartbeats:?}"
    );
    assert!(worker.log().contains("worker started"), "{}", worker.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_more_than_max_processes_run_at_once_and_none_starts_twice() {
    let bed = Bed::new();
    let master = StandIn::start().await;
    let ids = ["p-1", "p-2", "p-3"];
    for id in ids {
        // Offered at every heartbeat until it ends.
        master.offer(
            id,
            json!({
                "cmd": ["sh", "-c", "echo + >> \"$OUT/events\"; sleep 0.6; echo - >> \"$OUT/events\"; echo ran >> \"$OUT/$ID\""],
                "env": {"OUT": bed.out(), "ID": id},
            }),
        );
    }
    let _worker = WorkerProcess::start(&bed, &master.url(), &["--max-processes", "2"]);

    wait_until(30, "the three processes to end", || {
        ids.iter().all(|id| ended(&master, id))
    })
    .await;
    for id in ids {
        assert_eq!(
            master.state_names(id),
            ["init", "setup", "running", "success"]
        );
        assert_eq!(
            std::fs::read_to_string(bed.path(&format!("out/{id}"))).unwrap(),
            "ran\n",
            "{id} ran once"
        );
    }
    let events = std::fs::read_to_string(bed.path("out/events")).unwrap();
    let mut running = 0;
    let mut most = 0;
    for event in events.lines() {
        running += if event == "+" { 1 } else { -1 };
        most = most.max(running);
    }
    assert_eq!(most, 2, "{events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_from_the_master_terminates_the_process_and_its_failure_is_reported() {
    let bed = Bed::new();
    let master = StandIn::start().await;
    master.offer(
        "long-1",
        json!({"cmd": ["sh", "-c", "echo started; sleep 30"]}),
    );
    let _worker = WorkerProcess::start(&bed, &master.url(), &[]);
    wait_until(20, "the process to run", || {
        master.state_names("long-1").contains(&"running".to_owned())
    })
    .await;
    let command = master.states("long-1")[2]["pid"].as_u64().unwrap() as u32;

    master.kill("long-1");
    wait_until(20, "the process to fail", || ended(&master, "long-1")).await;
    let last = master.states("long-1").pop().unwrap();
    assert_eq!(last["state"], "failed");
    assert_eq!(last["signal"], 15, "{last}");
    assert!(!alive(command), "the command is gone");
    wait_until(10, "its log", || master.log("long-1").is_some()).await;
    assert_eq!(master.log("long-1").unwrap(), b"started\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_while_a_process_runs_delivers_its_end_once_restarted() {
    let bed = Bed::new();
    let master = StandIn::start().await;
    let marker = bed.path("out/marker");
    master.offer(
        "slow-1",
        json!({"cmd": ["sh", "-c", "sleep 1.5; echo done > \"$OUT/marker\""], "env": {"OUT": bed.out()}}),
    );
    let worker = WorkerProcess::start(&bed, &master.url(), &[]);
    wait_until(20, "the process to run", || {
        master.state_names("slow-1").contains(&"running".to_owned())
    })
    .await;
    worker.kill().await;
    assert!(
        !marker.exists(),
        "the command ended before the worker was killed"
    );

    wait_until(20, "the command to finish without its worker", || {
        marker.exists()
    })
    .await;
    assert_eq!(master.state_names("slow-1"), ["init", "setup", "running"]);
    assert_eq!(bed.records(), ["slow-1"], "the record waits for a worker");

    let _worker = WorkerProcess::start(&bed, &master.url(), &[]);
    wait_until(20, "the success to reach the master", || {
        ended(&master, "slow-1")
    })
    .await;
    assert_eq!(
        master.state_names("slow-1"),
        ["init", "setup", "running", "success"]
    );
    wait_until(10, "the record to go", || bed.records().is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_worker_and_leaves_its_processes_running() {
    let bed = Bed::new();
    let master = StandIn::start().await;
    let marker = bed.path("out/marker");
    master.offer(
        "slow-2",
        json!({"cmd": ["sh", "-c", "sleep 1; echo done > \"$OUT/marker\""], "env": {"OUT": bed.out()}}),
    );
    let mut worker = WorkerProcess::start(&bed, &master.url(), &[]);
    wait_until(20, "the process to run", || {
        master.state_names("slow-2").contains(&"running".to_owned())
    })
    .await;
    signal(worker.pid(), "TERM");
    let status = tokio::time::timeout(Duration::from_secs(10), worker.child.wait())
        .await
        .expect("the worker stops")
        .unwrap();
    assert!(status.success(), "{status:?}: {}", worker.log());
    assert!(worker.log().contains("stopping"), "{}", worker.log());
    assert!(!marker.exists());
    wait_until(20, "the command to finish", || marker.exists()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_gone_without_a_last_state_is_reported_failed() {
    let bed = Bed::new();
    let master = StandIn::start().await;
    master.offer("doomed-1", json!({"cmd": ["sleep", "30"]}));
    let _worker = WorkerProcess::start(&bed, &master.url(), &[]);
    wait_until(20, "the process to run", || {
        master
            .state_names("doomed-1")
            .contains(&"running".to_owned())
    })
    .await;
    let command = master.states("doomed-1")[2]["pid"].as_u64().unwrap() as u32;
    let runner: u32 = std::fs::read_to_string(bed.path("state/processes/doomed-1/runner.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(command));
    signal(runner, "KILL");
    wait_until(20, "the failure to reach the master", || {
        ended(&master, "doomed-1")
    })
    .await;
    let last = master.states("doomed-1").pop().unwrap();
    assert_eq!(last["state"], "failed");
    let reason = last["reason"].as_str().unwrap();
    assert!(reason.contains("the runner died"), "{last}");
    assert!(
        reason.contains(&format!("its command (pid {command}) was terminated")),
        "{last}"
    );
    // Its runner cannot end it any more: the worker did.
    assert!(!alive(command), "the orphaned command is gone");
}

/// Records a process in the worker's state directory as a worker would have,
/// `age` ago.
fn record_by_hand(bed: &Bed, id: &str, age: &str) -> PathBuf {
    let dir = bed.path(&format!("state/processes/{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("spec.json"), r#"{"cmd": ["true"]}"#).unwrap();
    let touched = std::process::Command::new("touch")
        .args(["-d", age])
        .arg(dir.join("spec.json"))
        .status()
        .unwrap();
    assert!(touched.success());
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_start_a_dead_runner_or_one_never_started_is_reported_failed() {
    let bed = Bed::new();
    let master = StandIn::start().await;
    // The worker died before it started this one's runner, a while ago.
    record_by_hand(&bed, "never-1", "1 hour ago");
    // This one's runner died (the machine restarted): its pid is someone else's.
    let dir = record_by_hand(&bed, "died-1", "1 hour ago");
    std::fs::write(dir.join("runner.pid"), format!("{}\n", std::process::id())).unwrap();
    let init =
        json!({"at": "2026-11-28T00:00:00Z", "state": "init", "dir": bed.path("gone-run-dir")});
    std::fs::write(dir.join("state.jsonl"), format!("{init}\n")).unwrap();
    // Just recorded, and its runner not started yet: left alone.
    record_by_hand(&bed, "young-1", "now");
    for id in ["never-1", "died-1", "young-1"] {
        master.offer(id, json!({"cmd": ["true"]}));
    }
    let _worker = WorkerProcess::start(&bed, &master.url(), &[]);

    wait_until(20, "both failures to reach the master", || {
        ended(&master, "never-1") && ended(&master, "died-1")
    })
    .await;
    let never = master.states("never-1");
    assert_eq!(names(&never), ["failed"]);
    assert!(
        never[0]["reason"]
            .as_str()
            .unwrap()
            .contains("never started"),
        "{never:?}"
    );
    let died = master.states("died-1");
    assert_eq!(names(&died), ["init", "failed"]);
    assert!(
        died[1]["reason"]
            .as_str()
            .unwrap()
            .contains("the runner died"),
        "{died:?}"
    );
    assert_eq!(master.log("died-1"), None, "no log file, no log");
    wait_until(10, "the two records to go", || bed.records() == ["young-1"]).await;
    assert!(
        master.state_names("young-1").is_empty(),
        "a recorded process is never started by the worker that finds it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_master_loses_no_state_and_gets_everything_once_it_answers() {
    let bed = Bed::new();
    let master = StandIn::start().await;
    master.offer(
        "patient-1",
        json!({"cmd": ["sh", "-c", "sleep 0.5; echo kept; exit 4"]}),
    );
    let worker = WorkerProcess::start(&bed, &master.url(), &[]);
    wait_until(20, "the process to be recorded", || {
        bed.records() == ["patient-1"]
    })
    .await;
    master.status.store(503, Ordering::SeqCst);
    let state_file = bed.path("state/processes/patient-1/state.jsonl");
    wait_until(20, "the process to fail while the master fails", || {
        std::fs::read_to_string(&state_file).is_ok_and(|text| text.contains("\"failed\""))
    })
    .await;
    // The log goes first once the run ended, then the states.
    let failed_calls = |origin: &Origin| {
        origin.hits("/api/processes/patient-1/states") + origin.hits("/api/processes/patient-1/log")
    };
    let before = failed_calls(&master.origin);
    wait_until(10, "the worker to try again", || {
        failed_calls(&master.origin) >= before + 2
    })
    .await;
    assert!(!ended(&master, "patient-1"));

    master.status.store(200, Ordering::SeqCst);
    wait_until(20, "the states and the log to arrive", || {
        ended(&master, "patient-1") && master.log("patient-1").is_some()
    })
    .await;
    let states = master.states("patient-1");
    let names = names(&states);
    // Whatever was accepted before the outage is not lost, nor anything after.
    assert_eq!(names.last().unwrap(), "failed");
    let mut unique = names.clone();
    unique.dedup();
    assert_eq!(unique, ["init", "setup", "running", "failed"], "{names:?}");
    assert_eq!(master.log("patient-1").unwrap(), b"kept\n");
    wait_until(10, "the record to go", || bed.records().is_empty()).await;
    let log = worker.log();
    assert_eq!(
        log.matches("the master is unavailable").count(),
        1,
        "one warning per outage: {log}"
    );
    assert!(log.contains("the master answers again"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_file_names_the_worker_and_its_capacity_and_the_command_line_wins() {
    let bed = Bed::new();
    let master = StandIn::start().await;
    let config = bed.path("host.toml");
    std::fs::write(
        &config,
        format!(
            "master = \"{}\"\nname = \"not-this-one\"\nmax_processes = 5\nstate_dir = \"{}\"\n",
            master.url(),
            bed.path("state").display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(bed.path("worker.log")).unwrap();
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_dadd"))
        .arg("worker")
        .arg("--config")
        .arg(&config)
        .args(["--name", HOST])
        .env_remove("DADD_TOKEN")
        .env_remove("DADD_MASTER")
        .stdin(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_until(20, "a heartbeat", || !master.heartbeats().is_empty()).await;
    assert_eq!(master.heartbeats()[0]["max_processes"], 5);
    assert!(bed.path("state/processes").is_dir());
    worker.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_host_name_is_refused_before_anything_starts() {
    let bed = Bed::new();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_dadd"))
        .args(["worker", "--master", "http://127.0.0.1:9", "--name", "a/b"])
        .arg("--state-dir")
        .arg(bed.path("state"))
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("host name \"a/b\""), "{stderr}");
    assert!(!Path::new(&bed.path("state")).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_the_runner_refuses_is_reported_failed_with_why() {
    let bed = Bed::new();
    let master = StandIn::start().await;
    master.offer("bad-1", json!({"cmd": ["true"], "timeout": true}));
    let _worker = WorkerProcess::start(&bed, &master.url(), &[]);
    wait_until(20, "the failure to reach the master", || {
        ended(&master, "bad-1")
    })
    .await;
    let states = master.states("bad-1");
    assert_eq!(names(&states), ["failed"]);
    let reason = states[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("could not be started") && reason.contains("timeout"),
        "{reason}"
    );
    wait_until(10, "the record to go", || bed.records().is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_times_out_holds_back_only_its_own_last_state_and_heartbeats_go_on() {
    let bed = Bed::new();
    let master = StandIn::start().await;
    master.offer("a-slow", json!({"cmd": ["sh", "-c", "echo slow log"]}));
    // Answered after the worker's 10 s timeout for a short log, until lifted.
    let slow = Duration::from_secs(15);
    master
        .books
        .lock()
        .unwrap()
        .slow_logs
        .insert("a-slow".to_owned(), slow);
    let _worker = WorkerProcess::start(&bed, &master.url(), &["--max-processes", "2"]);

    wait_until(20, "a put of a-slow's log", || {
        master.when("log-attempt a-slow").is_some()
    })
    .await;
    let attempt = master.when("log-attempt a-slow").unwrap();
    assert!(
        master.when("a-slow running").is_some_and(|at| at < attempt),
        "the states before the last go before the log"
    );
    // While the log hangs, another process is offered, starts, and reports.
    master.offer(
        "b-quick",
        json!({"cmd": ["sh", "-c", "sleep 1; echo quick log"]}),
    );
    wait_until(20, "b-quick to run", || {
        master.when("b-quick running").is_some()
    })
    .await;
    let running = master.when("b-quick running").unwrap() - attempt;
    assert!(
        running < Duration::from_secs(5),
        "b-quick reported running {running:?} after a-slow's log went"
    );
    // Its end waits for a-slow's put to time out, not for a-slow's log.
    wait_until(20, "b-quick's end", || {
        ended(&master, "b-quick") && master.log("b-quick").is_some()
    })
    .await;
    assert_eq!(master.log("b-quick").unwrap(), b"quick log\n");
    assert_eq!(
        master.state_names("a-slow"),
        ["init", "setup", "running"],
        "the last state waits for the log"
    );
    assert_eq!(master.log("a-slow"), None);

    master.books.lock().unwrap().slow_logs.clear();
    wait_until(30, "a-slow's end", || ended(&master, "a-slow")).await;
    assert_eq!(master.log("a-slow").unwrap(), b"slow log\n");
    let log = master.when("log a-slow").unwrap();
    assert!(
        master.when("a-slow success").unwrap() > log,
        "the log goes first"
    );
    wait_until(10, "the records to go", || bed.records().is_empty()).await;

    let times = master.books.lock().unwrap().heartbeat_times.clone();
    let longest = times
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .max()
        .unwrap();
    assert!(
        longest < Duration::from_secs(2),
        "heartbeats every 100 ms, the longest gap {longest:?} (forwarding took over 10 s)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_the_master_fails_holds_back_only_its_own_last_state() {
    let bed = Bed::new();
    let master = StandIn::start().await;
    master.offer("a-fails", json!({"cmd": ["sh", "-c", "echo kept"]}));
    master
        .books
        .lock()
        .unwrap()
        .failing_logs
        .insert("a-fails".to_owned());
    let worker = WorkerProcess::start(&bed, &master.url(), &[]);
    wait_until(20, "a put of a-fails's log", || {
        master.when("log-attempt a-fails").is_some()
    })
    .await;
    // Offered after, and after a-fails in id order.
    master.offer("b-fine", json!({"cmd": ["sh", "-c", "echo fine"]}));
    wait_until(20, "b-fine's end", || {
        ended(&master, "b-fine") && master.log("b-fine").is_some()
    })
    .await;
    assert_eq!(master.state_names("a-fails"), ["init", "setup", "running"]);
    assert!(
        worker.log().contains("the disk is full"),
        "{}",
        worker.log()
    );
    assert!(
        !worker.log().contains("the master is unavailable"),
        "a failure about one record is not an outage: {}",
        worker.log()
    );

    master.books.lock().unwrap().failing_logs.clear();
    wait_until(20, "a-fails's end", || ended(&master, "a-fails")).await;
    assert_eq!(master.log("a-fails").unwrap(), b"kept\n");
    assert!(master.when("a-fails success").unwrap() > master.when("log a-fails").unwrap());
    wait_until(10, "the records to go", || bed.records().is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_process_offered_again_is_not_started_again() {
    let bed = Bed::new();
    let master = StandIn::start().await;
    master.offer(
        "once-1",
        json!({"cmd": ["sh", "-c", "echo ran >> \"$OUT/once-1\""], "env": {"OUT": bed.out()}}),
    );
    // Offered again after it ended, as a master restored from a backup would.
    master.books.lock().unwrap().reoffer = true;
    let worker = WorkerProcess::start(&bed, &master.url(), &[]);
    wait_until(20, "the process to end", || ended(&master, "once-1")).await;
    wait_until(10, "the record to go", || bed.records().is_empty()).await;
    master.more_heartbeats(5).await;
    worker.kill().await;
    // The tombstone outlives the worker.
    let worker = WorkerProcess::start(&bed, &master.url(), &[]);
    master.more_heartbeats(5).await;

    assert_eq!(
        std::fs::read_to_string(bed.path("out/once-1")).unwrap(),
        "ran\n",
        "ran once"
    );
    assert!(bed.records().is_empty());
    assert_eq!(master.heartbeats().last().unwrap()["known"], json!([]));
    let log = worker.log();
    assert_eq!(
        log.matches("ran and forgot").count(),
        1,
        "warned once: {log}"
    );
    assert!(log.contains("once-1"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_name_the_instance_and_a_refused_one_starts_nothing_until_taken() {
    let bed = Bed::new();
    let master = StandIn::start().await;
    let refusal = "host test-host is up as another instance; stop it, or name this one otherwise";
    master.books.lock().unwrap().refuse_heartbeats = Some((409, refusal.to_owned()));
    master.offer("patient-2", json!({"cmd": ["true"]}));
    let worker = WorkerProcess::start(&bed, &master.url(), &[]);
    let path = format!("/api/hosts/{HOST}/heartbeat");
    wait_until(20, "refused heartbeats", || master.origin.hits(&path) >= 4).await;
    let refused = master.origin.requests(&path);
    let instance = serde_json::from_slice::<Value>(&refused[0].body).unwrap()["instance"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(instance.len(), 16, "{instance}");
    assert!(
        instance.chars().all(|c| c.is_ascii_hexdigit()),
        "{instance}"
    );
    assert!(bed.records().is_empty(), "nothing started");
    let log = worker.log();
    assert_eq!(log.matches(refusal).count(), 1, "said once: {log}");
    assert!(
        log.contains("another worker is up under this name"),
        "{log}"
    );

    master.books.lock().unwrap().refuse_heartbeats = None;
    wait_until(20, "the process to end", || ended(&master, "patient-2")).await;
    assert!(
        worker
            .log()
            .contains("the master takes the heartbeats again"),
        "{}",
        worker.log()
    );
    worker.kill().await;
    let _worker = WorkerProcess::start(&bed, &master.url(), &[]);
    master.more_heartbeats(2).await;
    let heartbeats = master.heartbeats();
    assert!(
        heartbeats.iter().all(|beat| beat["instance"] == instance),
        "the same instance, across restarts: {heartbeats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_cut_to_what_the_master_takes() {
    let bed = Bed::new();
    let master = StandIn::start().await;
    master.books.lock().unwrap().max_log_bytes = Some(64);
    master.offer(
        "chatty-1",
        json!({"cmd": ["sh", "-c", "for n in $(seq 1 50); do echo line $n; done"]}),
    );
    let _worker = WorkerProcess::start(&bed, &master.url(), &[]);
    wait_until(20, "the process and its log", || {
        ended(&master, "chatty-1") && master.log("chatty-1").is_some()
    })
    .await;
    let whole: String = (1..=50).map(|n| format!("line {n}\n")).collect();
    let log = String::from_utf8(master.log("chatty-1").unwrap()).unwrap();
    assert!(log.len() <= 64 && log.len() > 50, "{log:?}");
    assert!(whole.ends_with(&log), "the end: {log:?}");
    assert!(log.starts_with("line "), "from a line start: {log:?}");
}

// With the real master: `dadd master` and `dadd worker`, both real processes.

/// A running `dadd master` on a loopback port of its own, killed when dropped.
struct RealMaster {
    child: tokio::process::Child,
    port: u16,
}

impl RealMaster {
    /// `dadd master --listen 127.0.0.1:PORT --data-dir DATA --heartbeat-every
    /// 100ms`, once it listens.
    async fn start(data: &Path, port: u16) -> RealMaster {
        let child = common::master(data, port, &["--heartbeat-every", "100ms"])
            .spawn()
            .unwrap();
        common::wait_for_port(port).await;
        RealMaster { child, port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn submit(&self, spec: Value) -> String {
        let response = reqwest::Client::new()
            .post(self.url("/api/processes"))
            .header("content-type", "application/json")
            .body(spec.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        body["id"].as_str().unwrap().to_owned()
    }

    async fn show(&self, id: &str) -> Value {
        let response = reqwest::get(self.url(&format!("/api/processes/{id}")))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        serde_json::from_str(&response.text().await.unwrap()).unwrap()
    }

    /// Waits until process `id` is in `state` at the master; returns it.
    async fn wait_for(&self, id: &str, state: &str, seconds: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        loop {
            let process = self.show(id).await;
            if process["state"] == state {
                return process;
            }
            assert!(
                Instant::now() < deadline,
                "{id} never reached {state}: {process}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }
}

fn master_state_names(process: &Value) -> Vec<String> {
    names(process["states"].as_array().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_real_master_submitted_specs_run_on_the_worker_and_their_logs_arrive() {
    let bed = Bed::new();
    let data = bed.path("master");
    let master = RealMaster::start(&data, testbed::net::free_port().unwrap()).await;
    let _worker = WorkerProcess::start(&bed, &master.url("/"), &["--max-processes", "2"]);
    let ok: Vec<String> = futures_util::future::join_all((0..3).map(|n| {
        master.submit(json!({
            "cmd": ["sh", "-c", "echo $N >> \"$OUT/ran\"; echo ran $N"],
            "env": {"OUT": bed.out(), "N": n.to_string()},
        }))
    }))
    .await;
    let failing = master
        .submit(json!({"cmd": ["sh", "-c", "echo going down; exit 9"]}))
        .await;

    for id in &ok {
        let process = master.wait_for(id, "success", 30).await;
        assert_eq!(
            master_state_names(&process),
            ["init", "setup", "running", "success"]
        );
    }
    let mut ran: Vec<String> = std::fs::read_to_string(bed.path("out/ran"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    ran.sort();
    assert_eq!(ran, ["0", "1", "2"], "each ran once");
    // A success's log too, though its run directory is gone.
    for (n, id) in ok.iter().enumerate() {
        let log = reqwest::get(master.url(&format!("/api/processes/{id}/log")))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(log, format!("ran {n}\n"));
    }

    let process = master.wait_for(&failing, "failed", 30).await;
    assert_eq!(process["exit_code"], 9);
    wait_until(10, "the records to go", || bed.records().is_empty()).await;
    let process = master.show(&failing).await;
    assert_eq!(process["has_log"], true, "{process}");
    let log = reqwest::get(master.url(&format!("/api/processes/{failing}/log")))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(log, "going down\n");

    let hosts = reqwest::get(master.url("/api/hosts"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let hosts: Value = serde_json::from_str(&hosts).unwrap();
    assert_eq!(hosts["hosts"][0]["name"], HOST);
    assert_eq!(hosts["hosts"][0]["up"], true);
    assert_eq!(hosts["hosts"][0]["max_processes"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_real_master_a_worker_killed_mid_run_reports_the_end_once_restarted() {
    let bed = Bed::new();
    let master = RealMaster::start(&bed.path("master"), testbed::net::free_port().unwrap()).await;
    let worker = WorkerProcess::start(&bed, &master.url("/"), &[]);
    let marker = bed.path("out/marker");
    let id = master
        .submit(json!({
            "cmd": ["sh", "-c", "sleep 1.5; echo done > \"$OUT/marker\""],
            "env": {"OUT": bed.out()},
        }))
        .await;
    master.wait_for(&id, "running", 30).await;
    worker.kill().await;

    wait_until(20, "the command to finish without its worker", || {
        marker.exists()
    })
    .await;
    let process = master.show(&id).await;
    assert_eq!(master_state_names(&process), ["init", "setup", "running"]);

    let _worker = WorkerProcess::start(&bed, &master.url("/"), &[]);
    let process = master.wait_for(&id, "success", 30).await;
    assert_eq!(
        master_state_names(&process),
        ["init", "setup", "running", "success"]
    );
    wait_until(10, "the record to go", || bed.records().is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_real_master_stopped_during_a_run_the_states_arrive_once_it_is_back() {
    let bed = Bed::new();
    let data = bed.path("master");
    let port = testbed::net::free_port().unwrap();
    let master = RealMaster::start(&data, port).await;
    let worker = WorkerProcess::start(&bed, &master.url("/"), &[]);
    let id = master
        .submit(json!({"cmd": ["sh", "-c", "sleep 1; echo the end; exit 2"]}))
        .await;
    master.wait_for(&id, "running", 30).await;
    master.kill().await;

    let state_file = bed.path(&format!("state/processes/{id}/state.jsonl"));
    wait_until(20, "the process to end while the master is down", || {
        std::fs::read_to_string(&state_file).is_ok_and(|text| text.contains("\"failed\""))
    })
    .await;
    // A few ticks on a master that is down.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        bed.records(),
        [id.as_str()],
        "kept while the master is down"
    );

    let master = RealMaster::start(&data, port).await;
    let process = master.wait_for(&id, "failed", 30).await;
    assert_eq!(
        master_state_names(&process),
        ["init", "setup", "running", "failed"]
    );
    wait_until(10, "the record to go", || bed.records().is_empty()).await;
    let log = reqwest::get(master.url(&format!("/api/processes/{id}/log")))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(log, "the end\n");
    let log = worker.log();
    assert_eq!(
        log.matches("the master is unavailable").count(),
        1,
        "one warning per outage: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_real_master_a_kill_ends_the_running_process() {
    let bed = Bed::new();
    let master = RealMaster::start(&bed.path("master"), testbed::net::free_port().unwrap()).await;
    let _worker = WorkerProcess::start(&bed, &master.url("/"), &[]);
    let id = master.submit(json!({"cmd": ["sleep", "30"]})).await;
    let running = master.wait_for(&id, "running", 30).await;
    let command = running["pid"].as_u64().unwrap() as u32;

    let response = reqwest::Client::new()
        .post(master.url(&format!("/api/processes/{id}/kill")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let process = master.wait_for(&id, "failed", 30).await;
    assert_eq!(process["signal"], 15, "{process}");
    assert!(!alive(command), "the command is gone");
    wait_until(10, "the record to go", || bed.records().is_empty()).await;
}
