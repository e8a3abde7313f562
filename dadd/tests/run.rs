//! `dadd run`, end to end: the real binary, artifacts from a real origin on
//! loopback, real processes, failure mail through a real SMTP server (aiosmtpd),
//! a recording stand-in for the master, and a detached runner.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::Bed;
use serde_json::{Value, json};
use testbed::origin::{Origin, Reply};
use testbed::smtp::{SmtpOptions, SmtpServer};

mod common;

/// Here, the bed also holds the specs.
impl Bed {
    fn spec(&self, name: &str, spec: &Value) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, serde_json::to_vec(spec).unwrap()).unwrap();
        path
    }

    /// `dadd run SPEC --foreground --cache-dir CACHE ARGS...`, with TMPDIR in the bed.
    async fn run(&self, spec: &Path, args: &[&str]) -> Output {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_dadd"))
            .arg("run")
            .arg(spec)
            .arg("--foreground")
            .arg("--cache-dir")
            .arg(self.path("cache"))
            .args(args)
            .env("TMPDIR", self.path("tmp"))
            .env("DADD_LOG", "info")
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .unwrap()
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The states recorded in a kept run directory.
fn states(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("state.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn state_names(states: &[Value]) -> Vec<&str> {
    states
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect()
}

/// The run directory a failed run names in its last words.
fn kept_dir(output: &Output) -> PathBuf {
    let text = stderr(output);
    let (_, dir) = text
        .rsplit_once("the run directory is kept: ")
        .unwrap_or_else(|| panic!("no kept directory in {text}"));
    PathBuf::from(dir.trim())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_run_reads_its_config_and_artifacts_and_leaves_no_directory() {
    let bed = Bed::new();
    let origin = Origin::start().await.unwrap();
    origin.always(
        "/data.txt",
        Reply::ok("artifact body").header("cache-control", "max-age=600"),
    );
    let spec = bed.spec(
        "ok.json",
        &json!({
            "name": "ok",
            "cmd": ["sh", "-c", "cat \"$APP_SETTINGS_JSON\" > \"$OUT/config-seen.json\"; cat data.txt > \"$OUT/data-seen.txt\"; echo \"$1\" > \"$OUT/arg\"; pwd > \"$OUT/pwd\"", "sh", "$APP_SETTINGS"],
            "download_urls": {"data.txt": origin.url("/data.txt")},
            "config": {"answer": 42, "list": ["a"]},
            "env": {"OUT": bed.out()},
        }),
    );
    let dir = bed.path("run-dir");
    let output = bed.run(&spec, &["--dir", dir.to_str().unwrap()]).await;

    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        !dir.exists(),
        "the run directory is removed after a success"
    );
    let seen: Value =
        serde_json::from_str(&std::fs::read_to_string(bed.path("out/config-seen.json")).unwrap())
            .unwrap();
    assert_eq!(seen, json!({"answer": 42, "list": ["a"]}));
    assert_eq!(
        std::fs::read_to_string(bed.path("out/data-seen.txt")).unwrap(),
        "artifact body"
    );
    // `$APP_SETTINGS` in cmd is the same absolute path as APP_SETTINGS_JSON.
    let arg = std::fs::read_to_string(bed.path("out/arg")).unwrap();
    let pwd = std::fs::read_to_string(bed.path("out/pwd")).unwrap();
    assert_eq!(arg.trim(), format!("{}/config.json", pwd.trim()));
    let canonical = bed.root.path().canonicalize().unwrap().join("run-dir");
    assert_eq!(
        Path::new(pwd.trim()),
        canonical,
        "the command runs in the run directory"
    );
    assert_eq!(origin.hits("/data.txt"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_fetches_nothing_while_the_artifacts_are_fresh() {
    let bed = Bed::new();
    let origin = Origin::start().await.unwrap();
    let big = vec![7u8; 3 << 20];
    origin.always(
        "/big.bin",
        Reply::ok(big).header("cache-control", "max-age=600"),
    );
    origin.always(
        "/small.txt",
        Reply::ok("small").header("cache-control", "max-age=600"),
    );
    let spec = bed.spec(
        "twice.json",
        &json!({
            "cmd": ["sh", "-c", "wc -c < big.bin >> \"$OUT/sizes\"; cat small.txt >> \"$OUT/sizes\""],
            "download_urls": {"big.bin": origin.url("/big.bin"), "small.txt": origin.url("/small.txt")},
            "env": {"OUT": bed.out()},
        }),
    );
    for run in ["first", "second"] {
        let output = bed
            .run(&spec, &["--dir", bed.path(run).to_str().unwrap()])
            .await;
        assert!(output.status.success(), "{run}: {}", stderr(&output));
    }
    assert_eq!(
        origin.total_hits(),
        2,
        "the second run asked the origin nothing"
    );
    assert_eq!(
        std::fs::read_to_string(bed.path("out/sizes")).unwrap(),
        "3145728\nsmall3145728\nsmall",
        "both runs had their artifacts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_copy_for_the_next_run_waits_in_the_cache() {
    let bed = Bed::new();
    let origin = Origin::start().await.unwrap();
    origin.always(
        "/big.bin",
        Reply::ok(vec![7u8; 3 << 20]).header("cache-control", "max-age=600"),
    );
    let spec = bed.spec(
        "prepared.json",
        &json!({
            // Each run changes its copy: the next must not see it.
            "cmd": ["sh", "-c", "wc -c < big.bin >> \"$OUT/sizes\"; echo more >> big.bin"],
            "download_urls": {"big.bin": origin.url("/big.bin")},
            "env": {"OUT": bed.out()},
        }),
    );
    let prepared = bed.path("cache/prepared");
    let copies = || std::fs::read_dir(&prepared).map_or(0, Iterator::count);
    for run in ["first", "second", "third"] {
        // Prepared copies are on by default (--prepared-copies 4 GiB).
        let output = bed.run(&spec, &[]).await;
        assert!(output.status.success(), "{run}: {}", stderr(&output));
        if run == "first" {
            assert_eq!(copies(), 0, "a download leaves nothing to copy ahead");
        }
    }
    assert_eq!(copies(), 1, "one copy ready for the next run");
    assert_eq!(
        std::fs::read_to_string(bed.path("out/sizes")).unwrap(),
        "3145728\n".repeat(3)
    );
    // Once, or twice when the first run's job changed its file before the cache
    // had copied it (the cache then downloads it again for itself).
    assert!(
        (1..=2).contains(&origin.total_hits()),
        "{}",
        origin.total_hits()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_example_spec_runs_without_the_network() {
    let bed = Bed::new();
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello.yaml");
    let output = bed.run(&spec, &[]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let dir = kept_dir(&output);
    let log = std::fs::read_to_string(dir.join("output.log")).unwrap();
    assert!(
        log.contains("hello from") && log.contains("\"answer\": 42"),
        "{log}"
    );
    assert_eq!(
        state_names(&states(&dir)),
        ["init", "setup", "running", "success"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_successful_run_records_its_states_in_order_with_timestamps() {
    let bed = Bed::new();
    let spec = bed.spec(
        "keep.json",
        &json!({"cmd": "sh -c 'echo hello from the command'", "keep_dir": true}),
    );
    let output = bed.run(&spec, &[]).await;

    assert!(output.status.success(), "{}", stderr(&output));
    let dir = kept_dir(&output);
    assert!(dir.starts_with(bed.path("tmp")), "{}", dir.display());
    let states = states(&dir);
    assert_eq!(
        state_names(&states),
        ["init", "setup", "running", "success"]
    );
    let times: Vec<&str> = states.iter().map(|s| s["at"].as_str().unwrap()).collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "timestamps in order");
    assert!(states[2]["pid"].as_u64().unwrap() > 0);
    assert_eq!(
        std::fs::read_to_string(dir.join("output.log")).unwrap(),
        "hello from the command\n"
    );
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("spec.json")).unwrap()).unwrap();
    assert_eq!(
        written["cmd"],
        json!(["sh", "-c", "echo hello from the command"])
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("config.json"))
            .unwrap()
            .trim(),
        "{}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_keeps_its_directory_and_log_and_exits_with_the_commands_status() {
    let bed = Bed::new();
    let spec = bed.spec(
        "fail.json",
        &json!({"cmd": ["sh", "-c", "echo about to fail; echo on stderr >&2; exit 7"]}),
    );
    let output = bed.run(&spec, &[]).await;

    assert_eq!(output.status.code(), Some(7), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("exited with status 7"),
        "{}",
        stderr(&output)
    );
    let dir = kept_dir(&output);
    assert_eq!(
        std::fs::read_to_string(dir.join("output.log")).unwrap(),
        "about to fail\non stderr\n"
    );
    let states = states(&dir);
    assert_eq!(state_names(&states), ["init", "setup", "running", "failed"]);
    assert_eq!(states[3]["exit_code"], 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setup_failure_is_recorded_and_exits_non_zero_without_running_the_command() {
    let bed = Bed::new();
    let origin = Origin::start().await.unwrap();
    origin.always("/gone", Reply::status(404));
    let spec = bed.spec(
        "setup.json",
        &json!({
            "cmd": ["touch", format!("{}/started", bed.out())],
            "download_urls": {"gone.txt": origin.url("/gone")},
        }),
    );
    let output = bed.run(&spec, &[]).await;

    assert_eq!(output.status.code(), Some(125), "{}", stderr(&output));
    assert!(!bed.path("out/started").exists());
    let dir = kept_dir(&output);
    let states = states(&dir);
    assert_eq!(state_names(&states), ["init", "setup", "failed"]);
    let reason = states[2]["reason"].as_str().unwrap();
    assert!(
        reason.contains("gone.txt") && reason.contains("404"),
        "{reason}"
    );
}

/// Whether a process is gone (or a zombie nobody reaped: it runs no more).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_kills_the_whole_process_group_and_records_why() {
    let bed = Bed::new();
    // The shell and its child ignore SIGTERM: only SIGKILL to the group ends them.
    let spec = bed.spec(
        "slow.json",
        &json!({
            "cmd": ["sh", "-c", "trap '' TERM; sleep 300 & echo $! > \"$OUT/child\"; echo $$ > \"$OUT/shell\"; wait"],
            "env": {"OUT": bed.out()},
            "timeout": "1s",
        }),
    );
    let started = Instant::now();
    let output = bed.run(&spec, &["--kill-grace", "1s"]).await;

    // Generous: proves it did not wait for `sleep 300`.
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(output.status.code(), Some(124), "{}", stderr(&output));
    for file in ["child", "shell"] {
        let pid: u32 = std::fs::read_to_string(bed.path(&format!("out/{file}")))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(process_gone(pid), "the {file} ({pid}) outlived the timeout");
    }
    let dir = kept_dir(&output);
    let states = states(&dir);
    assert_eq!(state_names(&states), ["init", "setup", "running", "failed"]);
    let reason = states[3]["reason"].as_str().unwrap();
    assert!(
        reason.contains("timeout (1s)") && reason.contains("SIGKILL"),
        "{reason}"
    );
    assert_eq!(states[3]["signal"], 9);
}

/// Reads a pid a command wrote, waiting for it to be written.
async fn read_pid(path: &Path) -> u32 {
    for _ in 0..600 {
        if let Ok(Ok(pid)) = std::fs::read_to_string(path).map(|text| text.trim().parse()) {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} was never written", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_dadd_terminates_the_process_group_and_records_the_signal() {
    let bed = Bed::new();
    let spec = bed.spec(
        "long.json",
        &json!({
            "cmd": ["sh", "-c", "sleep 300 & echo $! > \"$OUT/child.tmp\"; mv \"$OUT/child.tmp\" \"$OUT/child\"; wait"],
            "env": {"OUT": bed.out()},
        }),
    );
    let dadd = tokio::process::Command::new(env!("CARGO_BIN_EXE_dadd"))
        .arg("run")
        .arg(&spec)
        .arg("--foreground")
        .arg("--cache-dir")
        .arg(bed.path("cache"))
        .env("TMPDIR", bed.path("tmp"))
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let child = read_pid(&bed.path("out/child")).await;
    let started = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &dadd.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let output = dadd.wait_with_output().await.unwrap();

    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(output.status.code(), Some(128 + 15), "{}", stderr(&output));
    assert!(
        process_gone(child),
        "the command's child ({child}) outlived dadd"
    );
    let states = states(&kept_dir(&output));
    assert_eq!(state_names(&states), ["init", "setup", "running", "failed"]);
    assert_eq!(states[3]["signal"], 15);
    let reason = states[3]["reason"].as_str().unwrap();
    assert!(reason.contains("dadd received SIGTERM"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_specs_are_refused_naming_the_field_and_nothing_starts() {
    let bed = Bed::new();
    let started = format!("{}/started", bed.out());
    for (name, spec, expected) in [
        (
            "missing-cmd.json",
            json!({"download_urls": {"a": "http://127.0.0.1:9/a"}}),
            "cmd: missing (the command to run",
        ),
        (
            "escape.json",
            json!({"cmd": ["touch", started], "download_urls": [{"name": "../x", "url": "http://127.0.0.1:9/x"}]}),
            "download_urls[0].name: \"../x\" is refused: it has a `..` component, which could leave the run directory",
        ),
        (
            "wrong-type.json",
            json!({"cmd": ["touch", started], "timeout": true}),
            "timeout: expected a duration like 30, \"90s\" or \"2h\", got true",
        ),
    ] {
        let spec = bed.spec(name, &spec);
        let dir = bed.path("never");
        let output = bed.run(&spec, &["--dir", dir.to_str().unwrap()]).await;
        assert_eq!(
            output.status.code(),
            Some(125),
            "{name}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(expected),
            "{name}: {}",
            stderr(&output)
        );
        assert!(!dir.exists(), "{name}: a run directory was made");
        assert!(!Path::new(&started).exists(), "{name}: the command ran");
    }
    assert_eq!(std::fs::read_dir(bed.path("tmp")).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yaml_spec_on_standard_input_runs() {
    let bed = Bed::new();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dadd"))
        .args(["run", "-", "--foreground", "--cache-dir"])
        .arg(bed.path("cache"))
        .env("TMPDIR", bed.path("tmp"))
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let yaml = format!("cmd: touch {}/yaml-ran\ntimeout: 1m\n", bed.out());
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, yaml.as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let output = child.wait_with_output().await.unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(bed.path("out/yaml-ran").exists());
}

/// A host config whose failure mail goes to `smtp`'s port.
fn smtp_config(bed: &Bed, port: u16) -> PathBuf {
    let path = bed.path("dadd.toml");
    std::fs::write(
        &path,
        format!(
            "[smtp]\nserver = \"127.0.0.1\"\nport = {port}\nfrom = \"dadd@example.com\"\nto = [\"ops@example.com\"]\ntimeout = \"5s\"\n"
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_sends_one_mail_with_the_log_tail_and_the_log_attached() {
    let bed = Bed::new();
    let smtp = SmtpServer::start(SmtpOptions::plain()).unwrap();
    let config = smtp_config(&bed, smtp.port());
    let spec = bed.spec(
        "fail.json",
        &json!({"name": "nightly", "cmd": ["sh", "-c", "echo first line; echo the-last-words >&2; exit 3"]}),
    );
    let output = bed
        .run(&spec, &["--config", config.to_str().unwrap()])
        .await;

    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let dir = kept_dir(&output);
    let mails = smtp.messages().unwrap();
    assert_eq!(mails.len(), 1, "{}", stderr(&output));
    let mail = &mails[0];
    mail.assert_text_contains(&[
        "the-last-words",
        "first line",
        "exit 3",
        "exited with status 3",
        "nightly",
        &dir.display().to_string(),
    ]);
    let subject = mail.raw_header("subject").unwrap();
    assert!(subject.contains("dadd"), "{subject}");
    let attachments: Vec<_> = mail.message.attachments().collect();
    assert_eq!(attachments.len(), 1);
    assert_eq!(attachments[0].contents(), b"first line\nthe-last-words\n");

    // A success sends nothing.
    let spec = bed.spec("ok.json", &json!({"cmd": "true"}));
    let output = bed
        .run(&spec, &["--config", config.to_str().unwrap()])
        .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(smtp.messages().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setup_failure_is_mailed_too() {
    let bed = Bed::new();
    let smtp = SmtpServer::start(SmtpOptions::plain()).unwrap();
    let config = smtp_config(&bed, smtp.port());
    let spec = bed.spec("missing.json", &json!({"cmd": "dadd-no-such-program --x"}));
    let output = bed
        .run(&spec, &["--config", config.to_str().unwrap()])
        .await;

    assert_eq!(output.status.code(), Some(127), "{}", stderr(&output));
    let mails = smtp.messages().unwrap();
    assert_eq!(mails.len(), 1, "{}", stderr(&output));
    mails[0].assert_text_contains(&["dadd-no-such-program", "not started"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_down_leaves_the_outcome_and_the_log_alone() {
    let bed = Bed::new();
    let mut smtp = SmtpServer::start(SmtpOptions::plain()).unwrap();
    let config = smtp_config(&bed, smtp.port());
    smtp.kill();
    let spec = bed.spec(
        "fail.json",
        &json!({"cmd": ["sh", "-c", "echo kept; exit 4"]}),
    );
    let output = bed
        .run(&spec, &["--config", config.to_str().unwrap()])
        .await;

    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("was not sent"),
        "{}",
        stderr(&output)
    );
    let dir = kept_dir(&output);
    assert_eq!(
        std::fs::read_to_string(dir.join("output.log")).unwrap(),
        "kept\n"
    );
    assert_eq!(
        state_names(&states(&dir)),
        ["init", "setup", "running", "failed"]
    );
}

/// A stand-in for the master: every call under /api/processes/ answers `status`
/// and is recorded.
async fn master(status: u16) -> Origin {
    let origin = Origin::start().await.unwrap();
    for id in ["job-1", "job-2"] {
        for call in ["states", "log"] {
            origin.always(
                &format!("/api/processes/{id}/{call}"),
                Reply::status(status),
            );
        }
    }
    origin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_gets_the_states_in_order_and_the_log_of_every_run() {
    let bed = Bed::new();
    let origin = master(200).await;
    let spec = bed.spec(
        "fail.json",
        &json!({"cmd": ["sh", "-c", "echo about to fail; exit 5"]}),
    );
    let url = origin.url("/");
    let output = bed
        .run(
            &spec,
            &[
                "--master",
                &url,
                "--id",
                "job-1",
                "--token",
                "cluster-secret",
            ],
        )
        .await;

    assert_eq!(output.status.code(), Some(5), "{}", stderr(&output));
    let posts = origin.requests("/api/processes/job-1/states");
    let states: Vec<Value> = posts
        .iter()
        .map(|post| {
            assert_eq!(post.method.as_str(), "POST");
            assert_eq!(post.header("authorization"), Some("Bearer cluster-secret"));
            assert_eq!(post.header("content-type"), Some("application/json"));
            serde_json::from_slice(&post.body).unwrap()
        })
        .collect();
    assert_eq!(state_names(&states), ["init", "setup", "running", "failed"]);
    assert_eq!(states[3]["exit_code"], 5);
    assert!(states.iter().all(|state| state["at"].is_string()));
    let puts = origin.requests("/api/processes/job-1/log");
    assert_eq!(puts.len(), 1);
    assert_eq!(puts[0].method.as_str(), "PUT");
    assert_eq!(
        puts[0].header("authorization"),
        Some("Bearer cluster-secret")
    );
    assert_eq!(&puts[0].body[..], b"about to fail\n");
    // The states are in the kept run directory too.
    assert_eq!(state_names(&self::states(&kept_dir(&output))).len(), 4);

    // A success: its states and its log (before the last state).
    let spec = bed.spec("ok.json", &json!({"cmd": "true"}));
    let output = bed.run(&spec, &["--master", &url, "--id", "job-2"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let posts = origin.requests("/api/processes/job-2/states");
    assert_eq!(posts.len(), 4);
    assert_eq!(posts[0].header("authorization"), None);
    let puts = origin.requests("/api/processes/job-2/log");
    assert_eq!(puts.len(), 1);
    assert_eq!(&puts[0].body[..], b"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_that_fails_or_is_down_loses_nothing() {
    let bed = Bed::new();
    let origin = master(500).await;
    let down = {
        let origin = Origin::start().await.unwrap();
        origin.url("/")
    };
    for url in [origin.url("/"), down] {
        let spec = bed.spec(
            "fail.json",
            &json!({"cmd": ["sh", "-c", "echo still here; exit 6"]}),
        );
        let output = bed.run(&spec, &["--master", &url, "--id", "job-1"]).await;

        assert_eq!(output.status.code(), Some(6), "{url}: {}", stderr(&output));
        let text = stderr(&output);
        assert!(text.contains("cannot record the state"), "{text}");
        assert!(text.contains("cannot upload the log"), "{text}");
        let dir = kept_dir(&output);
        assert_eq!(
            std::fs::read_to_string(dir.join("output.log")).unwrap(),
            "still here\n"
        );
        assert_eq!(
            state_names(&states(&dir)),
            ["init", "setup", "running", "failed"]
        );
    }
    assert_eq!(origin.hits("/api/processes/job-1/states"), 4);
}

/// A process's session id, from /proc.
fn session_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // After the name: state, ppid, pgrp, session.
    rest.split_whitespace().nth(3)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_runner_outlives_the_process_group_that_started_it() {
    let bed = Bed::new();
    let marker = bed.path("out/marker");
    let spec = bed.spec(
        "slow.json",
        &json!({
            "cmd": ["sh", "-c", "sleep 2; echo done > \"$OUT/marker\""],
            "env": {"OUT": bed.out()},
            "keep_dir": true,
        }),
    );
    let launched = bed.path("out/launched.txt");
    // The starter (later: the worker) is a shell that stays, in a group of its
    // own, which the test kills whole once dadd has started the runner.
    let script = "\"$DADD\" run \"$SPEC\" --cache-dir \"$CACHE\" > \"$LAUNCHED.tmp\" && mv \"$LAUNCHED.tmp\" \"$LAUNCHED\"; sleep 300";
    let mut starter = tokio::process::Command::new("sh")
        .args(["-c", script])
        .env("DADD", env!("CARGO_BIN_EXE_dadd"))
        .env("SPEC", &spec)
        .env("CACHE", bed.path("cache"))
        .env("LAUNCHED", &launched)
        .env("TMPDIR", bed.path("tmp"))
        .stdin(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let starter_group = starter.id().unwrap();
    let mut text = String::new();
    for _ in 0..600 {
        if let Ok(read) = std::fs::read_to_string(&launched) {
            text = read;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let field = |name: &str| -> String {
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in {text:?}"))
            .to_owned()
    };
    let dir = PathBuf::from(field("dir"));
    let pid: u32 = field("pid").parse().unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("runner.pid"))
            .unwrap()
            .trim(),
        pid.to_string()
    );
    assert_eq!(
        session_of(pid),
        Some(pid),
        "the runner leads a session of its own"
    );

    let kill = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{starter_group}")])
        .status()
        .unwrap();
    assert!(kill.success());
    starter.wait().await.unwrap();
    assert!(!marker.exists(), "the command finished before the kill");

    for _ in 0..600 {
        if process_gone(pid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(process_gone(pid), "the runner never ended");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "done\n");
    let states = states(&dir);
    assert_eq!(
        state_names(&states),
        ["init", "setup", "running", "success"],
        "{}",
        std::fs::read_to_string(dir.join("runner.log")).unwrap_or_default()
    );
}

/// Writes a wheel of the one-module package `name` 1.0 (the module says
/// `WHO = name`) into `dir` with the host's python3, and returns its file name.
fn make_wheel(dir: &Path, name: &str) -> String {
    const SCRIPT: &str = r#"
import base64, hashlib, sys, zipfile
d, name = sys.argv[1], sys.argv[2]
dist = name + "-1.0"
files = {
    name + ".py": "WHO = %r\n" % name,
    dist + ".dist-info/METADATA": "Metadata-Version: 2.1\nName: %s\nVersion: 1.0\n" % name,
    dist + ".dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: dadd-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
with zipfile.ZipFile("%s/%s-py3-none-any.whl" % (d, dist), "w") as wheel:
    for path, text in files.items():
        data = text.encode()
        wheel.writestr(path, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append("%s,sha256=%s,%d" % (path, digest, len(data)))
    record.append(dist + ".dist-info/RECORD,,")
    wheel.writestr(dist + ".dist-info/RECORD", "\n".join(record) + "\n")
"#;
    let status = std::process::Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(dir)
        .arg(name)
        .status()
        .unwrap();
    assert!(status.success());
    format!("{name}-1.0-py3-none-any.whl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_deps_are_installed_from_the_cheeseshop_and_a_wheel_dir_without_internet() {
    let bed = Bed::new();
    let wheels = bed.path("wheels");
    std::fs::create_dir(&wheels).unwrap();
    // One package from a package index (the origin), one from a wheel dir.
    let from_index = make_wheel(&wheels, "dadd_probe_index");
    make_wheel(&wheels, "dadd_probe_local");
    let origin = Origin::start().await.unwrap();
    origin.always(
        "/simple/dadd-probe-index/",
        Reply::ok(format!(
            "<html><body><a href=\"/files/{from_index}\">{from_index}</a></body></html>"
        ))
        .header("content-type", "text/html"),
    );
    origin.always(
        &format!("/files/{from_index}"),
        Reply::ok(std::fs::read(wheels.join(&from_index)).unwrap()),
    );
    std::fs::remove_file(wheels.join(&from_index)).unwrap();
    let local = format!(
        "--no-index --find-links {} dadd_probe_local",
        wheels.display()
    );
    let spec = bed.spec(
        "python.json",
        &json!({
            "cmd": ["sh", "-c", "command -v python > \"$OUT/which\"; python -c 'import dadd_probe_index as a, dadd_probe_local as b; print(a.WHO, b.WHO)' > \"$OUT/imported\""],
            "env": {"OUT": bed.out()},
            "python_deps": ["dadd_probe_index==1.0", local],
            "python_cheeseshop": origin.url("/simple/"),
        }),
    );
    let dir = bed.path("run-dir");
    let output = bed.run(&spec, &["--dir", dir.to_str().unwrap()]).await;

    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        std::fs::read_to_string(bed.path("out/imported")).unwrap(),
        "dadd_probe_index dadd_probe_local\n"
    );
    let canonical = bed.root.path().canonicalize().unwrap().join("run-dir");
    assert_eq!(
        std::fs::read_to_string(bed.path("out/which"))
            .unwrap()
            .trim(),
        canonical.join("venv/bin/python").display().to_string(),
        "the virtualenv's bin comes first on PATH"
    );
    assert_eq!(origin.hits(&format!("/files/{from_index}")), 1);

    // A dep that is nowhere: a setup failure, with pip's words in the log.
    let spec = bed.spec(
        "missing.json",
        &json!({
            "cmd": ["touch", format!("{}/started", bed.out())],
            "python_deps": format!("--no-index --find-links {} dadd-no-such-probe", wheels.display()),
        }),
    );
    let output = bed.run(&spec, &[]).await;
    assert_eq!(output.status.code(), Some(125), "{}", stderr(&output));
    assert!(!bed.path("out/started").exists());
    let dir = kept_dir(&output);
    let states = states(&dir);
    assert_eq!(state_names(&states), ["init", "setup", "failed"]);
    let reason = states[2]["reason"].as_str().unwrap();
    assert!(
        reason.contains("pip install") && reason.contains("dadd-no-such-probe"),
        "{reason}"
    );
    let log = std::fs::read_to_string(dir.join("output.log")).unwrap();
    assert!(log.contains("dadd-no-such-probe"), "{log}");
}

/// The states recorded in `path`, by name.
fn state_names_in(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let state: Value = serde_json::from_str(line).unwrap();
            state["state"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_file_keeps_the_states_of_a_run_whose_directory_is_removed() {
    let bed = Bed::new();
    let spec = bed.spec("ok.json", &json!({"cmd": "true"}));

    let foreground = bed.path("out/foreground.jsonl");
    let dir = bed.path("run-foreground");
    let output = bed
        .run(
            &spec,
            &[
                "--dir",
                dir.to_str().unwrap(),
                "--state-file",
                foreground.to_str().unwrap(),
            ],
        )
        .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        !dir.exists(),
        "the run directory is removed after a success"
    );
    assert_eq!(
        state_names_in(&foreground),
        ["init", "setup", "running", "success"]
    );

    // A detached runner is handed the file too (a relative path, from the
    // starter's directory: the runner itself runs in /).
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_dadd"))
        .arg("run")
        .arg(&spec)
        .args(["--cache-dir", "cache", "--state-file", "out/detached.jsonl"])
        .current_dir(bed.root.path())
        .env("TMPDIR", bed.path("tmp"))
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let detached = bed.path("out/detached.jsonl");
    let deadline = Instant::now() + Duration::from_secs(30);
    while state_names_in(&detached).last().map(String::as_str) != Some("success") {
        assert!(Instant::now() < deadline, "{:?}", state_names_in(&detached));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        state_names_in(&detached),
        ["init", "setup", "running", "success"]
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let dir = stdout
        .lines()
        .find_map(|line| line.strip_prefix("dir: "))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(dir).exists() {
        assert!(Instant::now() < deadline, "{dir} is still there");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_master_reports_nowhere_even_when_the_config_names_a_master() {
    let bed = Bed::new();
    let origin = master(200).await;
    let config = bed.path("host.toml");
    std::fs::write(&config, format!("master = \"{}\"\n", origin.url("/"))).unwrap();
    let spec = bed.spec("ok.json", &json!({"cmd": "true"}));
    let states = bed.path("out/states.jsonl");
    let output = bed
        .run(
            &spec,
            &[
                "--config",
                config.to_str().unwrap(),
                "--id",
                "job-1",
                "--no-master",
                "--state-file",
                states.to_str().unwrap(),
            ],
        )
        .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        state_names_in(&states),
        ["init", "setup", "running", "success"]
    );
    assert_eq!(origin.total_hits(), 0, "the master was not called");
}
