//! `erroremail`: runs a command, and mails its failure.
//!
//! ```text
//! erroremail [--config FILE] [--tail N] [--context KEY=VALUE]... -- COMMAND [ARGS...]
//! ```
//!
//! The command's output passes through to this process's stdout and stderr as it
//! comes, and is copied to a temporary log. When the command fails (non-zero exit,
//! a signal, or it cannot start), the failure mail shows the log's last lines and
//! attaches the log. The wrapper exits with the command's status, or 128 + the
//! signal that killed it, as shells do.
//!
//! A config that cannot be loaded does not stop the command: a cron job keeps
//! running (the error is printed first, so it lands in cron's mail), and the
//! wrapper still exits with the command's status. The same goes for a mail that
//! cannot be sent; the log is then kept, and its path printed.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use erroremail::{Config, ErrorEmail, Exit, Failure, Outcome, ProcessFailure};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::signal::unix::{Signal, SignalKind, signal};

/// Runs COMMAND; when it fails, mails the failure (command, status, host, duration,
/// the end of its output, and the whole output attached) and exits with its status.
#[derive(Debug, Parser)]
#[command(
    name = "erroremail",
    version,
    override_usage = "erroremail [--config FILE] [--tail N] [--context KEY=VALUE]... -- COMMAND [ARGS]..."
)]
struct Args {
    /// Config file, TOML (*.toml) or YAML (*.yaml, *.yml); without it, the
    /// ERROREMAIL_* environment variables (ERROREMAIL_SERVER, ERROREMAIL_TO, ...).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Lines of the command's output shown in the mail; the whole output is attached.
    #[arg(long, value_name = "N", default_value_t = ProcessFailure::DEFAULT_TAIL_LINES)]
    tail: usize,

    /// A context value, shown in the mail and usable in the subject as {KEY}.
    #[arg(long = "context", value_name = "KEY=VALUE", value_parser = key_value)]
    context: Vec<(String, String)>,

    /// The command to run, and its arguments.
    #[arg(required = true, trailing_var_arg = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got `{text}`")),
    }
}

/// How long output still drains after the command exits; a background process it
/// left behind may hold the pipes open for good.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("erroremail: cannot start: {err}");
            return ExitCode::from(70);
        }
    };
    let status = runtime.block_on(run(args));
    ExitCode::from(u8::try_from(status & 0xff).unwrap_or(u8::MAX))
}

async fn run(args: Args) -> i32 {
    let email = load(&args);
    if let Err(err) = &email {
        eprintln!(
            "erroremail: {err:#}\nerroremail: running the command anyway; its failure will not be mailed"
        );
    }
    let command: Vec<String> = args
        .command
        .iter()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    let log = match tempfile::Builder::new()
        .prefix("erroremail-")
        .suffix(".log")
        .tempfile()
    {
        Ok(log) => log,
        Err(err) => {
            eprintln!("erroremail: cannot create the log file: {err}");
            return exec_without_log(&args.command).await;
        }
    };
    let ran = run_teed(&args.command, log.path()).await;
    let failure = match ran {
        Ok(ran) if ran.exit.success() => return 0,
        Ok(ran) => ProcessFailure::new(command, ran.exit)
            .started(ran.started)
            .duration(ran.duration),
        Err(err) => ProcessFailure::not_started(command, &err),
    };
    let status = failure.exit().shell_status();
    let mut failure = failure.log_file(log.path()).tail_lines(args.tail);
    if let Ok(dir) = std::env::current_dir() {
        failure = failure.working_dir(dir);
    }
    let mailed = match email {
        Ok(email) => report(&email, failure.into()).await,
        Err(_) => false,
    };
    if !mailed {
        match log.keep() {
            Ok((_, path)) => eprintln!(
                "erroremail: the command's output is kept in {}",
                path.display()
            ),
            Err(err) => eprintln!("erroremail: the command's output could not be kept: {err}"),
        }
    }
    status
}

fn load(args: &Args) -> Result<ErrorEmail> {
    let config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => {
            if !std::env::vars_os()
                .any(|(name, _)| name.to_string_lossy().starts_with("ERROREMAIL_"))
            {
                bail!(
                    "no config: give --config FILE or set ERROREMAIL_SERVER, ERROREMAIL_FROM, ERROREMAIL_TO"
                );
            }
            Config::from_env().context("from the ERROREMAIL_* environment variables")?
        }
    };
    let config = match (config.throttle_file(), default_throttle_file()) {
        (None, Some(path)) => config.with_throttle_file(path),
        _ => config,
    };
    let mut builder = ErrorEmail::builder(config);
    for (key, value) in &args.context {
        builder = builder.context(key, value);
    }
    Ok(builder.build()?)
}

/// Each run of the wrapper is a new process, so repeats can only be counted in a
/// file: `$XDG_STATE_HOME/erroremail/throttle.json`, or under `~/.local/state`.
fn default_throttle_file() -> Option<PathBuf> {
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/state"))
        })?;
    Some(state.join("erroremail").join("throttle.json"))
}

async fn report(email: &ErrorEmail, failure: Failure) -> bool {
    let to: Vec<String> = email
        .config()
        .to()
        .iter()
        .map(|to| to.email.to_string())
        .collect();
    match email.send(&failure).await {
        Ok(Outcome::Sent { stands_for: 1 }) => {
            eprintln!("erroremail: failure mailed to {}", to.join(", "));
            true
        }
        Ok(Outcome::Sent { stands_for }) => {
            eprintln!(
                "erroremail: failure mailed to {} (the mail stands for {stands_for} failures)",
                to.join(", ")
            );
            true
        }
        Ok(Outcome::Throttled {
            count,
            next_mail_at,
        }) => {
            eprintln!(
                "erroremail: failure {count} of its kind in this window, not mailed; the next mail goes at failure {next_mail_at}"
            );
            true
        }
        Err(err) => {
            eprintln!("erroremail: {err}");
            false
        }
    }
}

struct Ran {
    exit: Exit,
    started: SystemTime,
    duration: Duration,
}

/// Runs the command with its stdout and stderr copied to ours and to `log`.
async fn run_teed(command: &[OsString], log: &std::path::Path) -> std::io::Result<Ran> {
    let log = Arc::new(Mutex::new(File::create(log)?));
    let (program, args) = split_command(command)?;
    let signals = SignalForwarding::install();
    if let Err(err) = &signals {
        eprintln!("erroremail: cannot handle signals, SIGTERM will not reach the command: {err}");
    }
    let started = SystemTime::now();
    let clock = Instant::now();
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let forwarding = match (signals, child.id()) {
        (Ok(signals), Some(pid)) => Some(signals.to(pid)),
        _ => None,
    };
    let mut pumps = Vec::new();
    if let Some(out) = child.stdout.take() {
        pumps.push(tokio::spawn(tee(
            out,
            tokio::io::stdout(),
            Arc::clone(&log),
        )));
    }
    if let Some(err) = child.stderr.take() {
        pumps.push(tokio::spawn(tee(
            err,
            tokio::io::stderr(),
            Arc::clone(&log),
        )));
    }
    let status = child.wait().await;
    let duration = clock.elapsed();
    if let Some(forwarding) = forwarding {
        forwarding.abort();
    }
    let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, async {
        for pump in pumps {
            let _ = pump.await;
        }
    })
    .await;
    let exit = match status {
        Ok(status) => Exit::from(status),
        Err(err) => {
            eprintln!("erroremail: lost track of the command: {err}");
            Exit::Code(255)
        }
    };
    Ok(Ran {
        exit,
        started,
        duration,
    })
}

fn split_command(command: &[OsString]) -> std::io::Result<(&OsString, &[OsString])> {
    command
        .split_first()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no command given"))
}

/// When no log file can be made, the command still runs, its output untouched.
async fn exec_without_log(command: &[OsString]) -> i32 {
    let status = match split_command(command) {
        Ok((program, args)) => {
            tokio::process::Command::new(program)
                .args(args)
                .status()
                .await
        }
        Err(err) => Err(err),
    };
    match status {
        Ok(status) => Exit::from(status).shell_status(),
        Err(err) => {
            eprintln!("erroremail: cannot run the command: {err}");
            ProcessFailure::not_started(
                command.iter().map(|a| a.to_string_lossy().into_owned()),
                &err,
            )
            .exit()
            .shell_status()
        }
    }
}

/// Copies `from` to `terminal` and `log` until the end of the stream. A terminal
/// that goes away (a closed pipe) stops the copy to it, never the copy to the log.
async fn tee(
    mut from: impl AsyncRead + Unpin,
    mut terminal: impl AsyncWrite + Unpin,
    log: Arc<Mutex<File>>,
) {
    let mut buffer = vec![0; 16 * 1024];
    let mut terminal_open = true;
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        let chunk = &buffer[..read];
        if terminal_open {
            terminal_open =
                terminal.write_all(chunk).await.is_ok() && terminal.flush().await.is_ok();
        }
        if let Ok(mut file) = log.lock() {
            let _ = file.write_all(chunk);
        }
    }
}

/// SIGTERM sent to the wrapper (by a supervisor, `timeout`, `kill`) goes to the
/// command, so that it ends and its failure is mailed. SIGINT, SIGQUIT and SIGHUP
/// from a terminal reach the command directly (same process group); the wrapper
/// only outlives them to report how the command ended.
///
/// The handlers are installed before the command starts, so that no signal meant
/// for it can end the wrapper first.
struct SignalForwarding {
    term: Signal,
    others: [Signal; 3],
}

impl SignalForwarding {
    fn install() -> std::io::Result<SignalForwarding> {
        Ok(SignalForwarding {
            term: signal(SignalKind::terminate())?,
            others: [
                signal(SignalKind::interrupt())?,
                signal(SignalKind::quit())?,
                signal(SignalKind::hangup())?,
            ],
        })
    }

    /// Forwards until the task is aborted.
    fn to(self, pid: u32) -> tokio::task::JoinHandle<()> {
        let SignalForwarding {
            mut term,
            others: [mut int, mut quit, mut hup],
        } = self;
        tokio::spawn(async move {
            let pid = i32::try_from(pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw);
            loop {
                tokio::select! {
                    Some(()) = term.recv() => {
                        if let Some(pid) = pid {
                            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                        }
                    }
                    Some(()) = int.recv() => {}
                    Some(()) = quit.recv() => {}
                    Some(()) = hup.recv() => {}
                    else => return,
                }
            }
        })
    }
}
