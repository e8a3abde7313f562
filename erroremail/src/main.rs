//! `erroremail`: runs a command, and mails its failure.
//!
//! ```text
//! erroremail [--config FILE] [--tail N] [--context KEY=VALUE]... -- COMMAND [ARGS...]
//! ```
//!
//! The command's output passes through to this process's stdout and stderr as it
//! comes, and its end is kept in memory (at most the attachment cap; nothing is
//! written to disk). When the command fails (non-zero exit, a signal, or it cannot
//! start), the failure mail shows the last lines of its stderr and of its output,
//! and attaches what was kept. The wrapper exits with the command's status, or
//! 128 + the signal that killed it, as shells do.
//!
//! A config that cannot be loaded does not stop the command: a cron job keeps
//! running (the error is printed first, so it lands in cron's mail), and the
//! wrapper still exits with the command's status. The same goes for a mail that
//! cannot be sent; the output is then written to a log file, and its path printed.
//!
//! # Signals
//!
//! SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to the wrapper are passed to the
//! command, whose failure is then mailed with the signal named. When stdin is not
//! a terminal (cron, a supervisor, a script), the command runs in a process group
//! of its own and each signal goes to that whole group, so that what it started
//! (`sh -c 'worker & wait'`) stops too; once the command has ended, whatever is
//! left of the group gets SIGTERM. When stdin is a terminal, the command stays in
//! the terminal's foreground group, where Ctrl-C and Ctrl-\ already reach it: the
//! wrapper passes on SIGTERM and SIGHUP only, and SIGINT or SIGQUIT sent to the
//! wrapper's pid alone do not reach the command.

use std::ffi::OsString;
use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use erroremail::{
    CapturedOutput, Config, ErrorEmail, Exit, Failure, Outcome, ProcessFailure, Stream,
    SubjectTemplate,
};
use rustix::process::{Pid, Signal as UnixSignal, kill_process, kill_process_group};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::{ChildStderr, ChildStdout};
use tokio::signal::unix::{Signal, SignalKind, signal};

/// Runs COMMAND; when it fails, mails the failure (command, status, host, duration,
/// the end of its output, and the output attached) and exits with its status.
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

    /// Lines of the command's output shown in the mail; the end of the output
    /// (up to 4 MiB) is attached.
    #[arg(long, value_name = "N", default_value_t = ProcessFailure::DEFAULT_TAIL_LINES)]
    tail: usize,

    /// A context value, shown in the mail and usable in the subject as {KEY}.
    /// Runs with different context values are throttled apart.
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

/// The wrapper's subject unless the config sets one: where, what, and how it ended,
/// early, where mail clients do not cut it.
const DEFAULT_SUBJECT: &str = "[{host}] {message}";

/// How long output still drains after the command exits; a background process it
/// left behind may hold the pipes open for good.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let args = Args::parse();
    // Warnings (a throttle file that cannot be used) reach the operator by
    // default; what became of the mail the wrapper says itself, once. RUST_LOG
    // says otherwise.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,erroremail::email=off")
            }),
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
    let output = Arc::new(Mutex::new(CapturedOutput::new(
        ProcessFailure::DEFAULT_ATTACH_LIMIT,
    )));
    let ran = run_captured(&args.command, &output).await;
    let output = output
        .lock()
        .map(|output| output.clone())
        .unwrap_or_else(|poisoned| poisoned.into_inner().clone());
    let (failure, stopped_by) = match ran {
        Ok(ran) if ran.exit.success() => return 0,
        Ok(ran) => (
            ProcessFailure::new(command, ran.exit)
                .started(ran.started)
                .duration(ran.duration),
            ran.stopped_by,
        ),
        Err(err) => (ProcessFailure::not_started(command, &err), None),
    };
    let status = failure.exit().shell_status();
    let mut failure = failure.output(output.clone()).tail_lines(args.tail);
    if let Ok(dir) = std::env::current_dir() {
        failure = failure.working_dir(dir);
    }
    let mut failure = Failure::from(failure);
    if let Some(signal) = stopped_by {
        failure = failure.fact(
            "Stopped by",
            format!(
                "{}, sent to erroremail (pid {}) and passed on to the command",
                signal.name(),
                std::process::id()
            ),
        );
    }
    for (key, value) in &args.context {
        failure = failure.keyed_by(format!("{key}={value}"));
    }
    let mailed = match email {
        Ok(email) => report(&email, &failure).await,
        Err(_) => false,
    };
    if !mailed {
        keep_log(&output);
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
    let subject = SubjectTemplate::parse(DEFAULT_SUBJECT).map_err(anyhow::Error::msg)?;
    let config = config.with_default_subject(subject);
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

/// Mails the failure; says on stderr what became of it. True when nothing more
/// needs keeping: mailed, or counted by the throttle.
async fn report(email: &ErrorEmail, failure: &Failure) -> bool {
    let to = email.config().to().join(", ");
    match email.send(failure).await {
        Ok(Outcome::Sent { stands_for: 1 }) => {
            eprintln!("erroremail: failure mailed to {to}");
            true
        }
        Ok(Outcome::Sent { stands_for }) => {
            eprintln!(
                "erroremail: failure mailed to {to} (the mail stands for {stands_for} failures)"
            );
            true
        }
        Ok(Outcome::Throttled {
            count,
            next_mail_at,
        }) => {
            eprintln!(
                "erroremail: failure {count} of its kind in a row, not mailed; the next mail goes at failure {next_mail_at}"
            );
            true
        }
        Err(err) => {
            eprintln!("erroremail: {}", err.explain());
            false
        }
    }
}

/// Writes what was kept of the output to a log file that stays, and says where:
/// the failure was not mailed, and this is all that is left of it.
fn keep_log(output: &CapturedOutput) {
    if output.is_empty() {
        eprintln!("erroremail: the command wrote no output; there is no log to keep");
        return;
    }
    let kept = tempfile::Builder::new()
        .prefix("erroremail-")
        .suffix(".log")
        .tempfile()
        .and_then(|mut file| {
            file.write_all(&output.to_log_file_content())?;
            file.flush()?;
            file.keep().map_err(|err| err.error)
        });
    match kept {
        Ok((_, path)) => eprintln!(
            "erroremail: the command's output is kept in {}",
            path.display()
        ),
        Err(err) => eprintln!("erroremail: the command's output could not be kept: {err}"),
    }
}

struct Ran {
    exit: Exit,
    started: SystemTime,
    duration: Duration,
    /// The first signal the wrapper received and passed on.
    stopped_by: Option<Received>,
}

/// Runs the command with its stdout and stderr copied to ours and to `output`, and
/// passes on the signals the wrapper receives.
async fn run_captured(
    command: &[OsString],
    output: &Arc<Mutex<CapturedOutput>>,
) -> std::io::Result<Ran> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no command given"))?;
    // Installed before the command starts, so that no signal meant for it can end
    // the wrapper first.
    let mut signals = match Signals::install() {
        Ok(signals) => Some(signals),
        Err(err) => {
            eprintln!("erroremail: cannot handle signals; they will not be passed on: {err}");
            None
        }
    };
    let own_group = !std::io::stdin().is_terminal();
    let mut spawn = tokio::process::Command::new(program);
    spawn
        .args(args)
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if own_group {
        spawn.process_group(0);
    }
    let started = SystemTime::now();
    let clock = Instant::now();
    let mut child = spawn.spawn()?;
    let target = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(Pid::from_raw)
        .map(|pid| Target { pid, own_group });
    let pump = tokio::spawn(tee(
        child.stdout.take(),
        child.stderr.take(),
        Arc::clone(output),
    ));
    let mut stopped_by = None;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            Some(received) = next_signal(&mut signals) => {
                stopped_by.get_or_insert(received);
                if let Some(target) = &target {
                    target.pass_on(received);
                }
            }
        }
    };
    let duration = clock.elapsed();
    if let (Some(target), Some(_)) = (&target, stopped_by) {
        target.stop_leftovers();
    }
    let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, pump).await;
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
        stopped_by,
    })
}

/// Copies the command's stdout and stderr to ours and into `output` until both
/// end. One task reads both, stdout first when both have something: the order
/// between two pipes is lost once both hold data, and a program mostly reports
/// progress on stdout before it fails on stderr. A terminal that goes away (a
/// closed pipe) stops the copy to it, never the record.
async fn tee(
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    output: Arc<Mutex<CapturedOutput>>,
) {
    let mut out = Pipe::new(stdout, tokio::io::stdout());
    let mut err = Pipe::new(stderr, tokio::io::stderr());
    while out.open() || err.open() {
        let (stream, read) = tokio::select! {
            biased;
            read = out.read(), if out.open() => (Stream::Stdout, read),
            read = err.read(), if err.open() => (Stream::Stderr, read),
        };
        let chunk = match stream {
            Stream::Stdout => out.pass_through(read).await,
            Stream::Stderr => err.pass_through(read).await,
        };
        let Some(chunk) = chunk else {
            continue;
        };
        if let Ok(mut output) = output.lock() {
            output.record(stream, chunk);
        }
    }
}

/// One of the command's output streams, and where it passes through to.
struct Pipe<R, W> {
    from: Option<R>,
    terminal: W,
    terminal_open: bool,
    buffer: Vec<u8>,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Pipe<R, W> {
    fn new(from: Option<R>, terminal: W) -> Self {
        Pipe {
            from,
            terminal,
            terminal_open: true,
            buffer: vec![0; 16 * 1024],
        }
    }

    fn open(&self) -> bool {
        self.from.is_some()
    }

    /// Reads what is there (cancel-safe: nothing is lost if another pipe wins).
    async fn read(&mut self) -> std::io::Result<usize> {
        match &mut self.from {
            Some(from) => from.read(&mut self.buffer).await,
            None => Ok(0),
        }
    }

    /// Writes what was read to the terminal and returns it; closes the pipe at
    /// its end.
    async fn pass_through(&mut self, read: std::io::Result<usize>) -> Option<&[u8]> {
        let read = match read {
            Ok(0) | Err(_) => {
                self.from = None;
                return None;
            }
            Ok(read) => read,
        };
        let chunk = &self.buffer[..read];
        if self.terminal_open {
            self.terminal_open =
                self.terminal.write_all(chunk).await.is_ok() && self.terminal.flush().await.is_ok();
        }
        Some(chunk)
    }
}

/// A signal the wrapper passes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Received {
    Interrupt,
    Terminate,
    Hangup,
    Quit,
}

impl Received {
    const ALL: [Received; 4] = [
        Received::Interrupt,
        Received::Terminate,
        Received::Hangup,
        Received::Quit,
    ];

    fn name(self) -> &'static str {
        match self {
            Received::Interrupt => "SIGINT",
            Received::Terminate => "SIGTERM",
            Received::Hangup => "SIGHUP",
            Received::Quit => "SIGQUIT",
        }
    }

    fn kind(self) -> SignalKind {
        match self {
            Received::Interrupt => SignalKind::interrupt(),
            Received::Terminate => SignalKind::terminate(),
            Received::Hangup => SignalKind::hangup(),
            Received::Quit => SignalKind::quit(),
        }
    }

    fn unix(self) -> UnixSignal {
        match self {
            Received::Interrupt => UnixSignal::INT,
            Received::Terminate => UnixSignal::TERM,
            Received::Hangup => UnixSignal::HUP,
            Received::Quit => UnixSignal::QUIT,
        }
    }

    /// Whether a terminal sends it to its whole foreground group by itself (Ctrl-C,
    /// Ctrl-\).
    fn sent_by_terminal_keys(self) -> bool {
        matches!(self, Received::Interrupt | Received::Quit)
    }
}

/// The wrapper's handlers for the signals it passes on.
struct Signals(Vec<(Received, Signal)>);

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Received::ALL
            .into_iter()
            .map(|received| Ok((received, signal(received.kind())?)))
            .collect::<std::io::Result<_>>()
            .map(Signals)
    }
}

/// The next signal received; never, without handlers.
async fn next_signal(signals: &mut Option<Signals>) -> Option<Received> {
    let Some(Signals(handlers)) = signals else {
        return std::future::pending().await;
    };
    let waits = handlers.iter_mut().map(|(received, handler)| {
        let received = *received;
        Box::pin(async move { handler.recv().await.map(|()| received) })
    });
    futures_select_first(waits).await
}

/// The first of `futures` to finish.
async fn futures_select_first<F>(futures: impl IntoIterator<Item = F>) -> F::Output
where
    F: std::future::Future + Unpin,
{
    let mut futures: Vec<F> = futures.into_iter().collect();
    std::future::poll_fn(move |cx| {
        for future in &mut futures {
            if let std::task::Poll::Ready(output) = std::pin::Pin::new(future).poll(cx) {
                return std::task::Poll::Ready(output);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Where passed-on signals go: the command, or its whole process group.
struct Target {
    pid: Pid,
    own_group: bool,
}

impl Target {
    fn pass_on(&self, received: Received) {
        let sent = if self.own_group {
            kill_process_group(self.pid, received.unix())
        } else if received.sent_by_terminal_keys() {
            // The terminal delivered it to the foreground group, the command included.
            return;
        } else {
            kill_process(self.pid, received.unix())
        };
        if let Err(err) = sent {
            tracing::warn!(signal = received.name(), %err, "erroremail: cannot pass the signal on");
        }
    }

    /// After the command was stopped by a signal, ends what it left running in its
    /// group (a background job that ignores SIGINT, as `sh` makes them).
    fn stop_leftovers(&self) {
        if self.own_group {
            // ESRCH: nothing was left.
            let _ = kill_process_group(self.pid, UnixSignal::TERM);
        }
    }
}
