//! `dadd`: run a spec on this host, fetch its artifacts, serve the master, or
//! call it (submit, ps, show, logs, kill, hosts, put).

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use dadd::client::{MasterClient, render};
use dadd::config::HostConfig;
use dadd::progress::FetchBars;
use dadd::runner::{
    FileStateSink, MasterSink, RunOutcome, Runner, SPEC_FILE, STATE_FILE, StateSink, make_run_dir,
};
use dadd::spec::{Format, Spec};
use fetcher::Fetcher;
use tracing_subscriber::EnvFilter;
use url::Url;

/// Daemon administrator: run a short spec on this host.
#[derive(Debug, Parser)]
#[command(name = "dadd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a spec: make a run directory, write the spec and config there, fetch the
    /// artifacts, run `cmd` with its output in output.log and its states in
    /// state.jsonl; remove the directory on success, keep it on failure.
    ///
    /// Exits with the command's status: 128 + N when signal N killed it (or dadd
    /// received SIGINT, SIGTERM or SIGHUP, and terminated the command's process
    /// group), 124 when it timed out, 127 when the program is not found, 126 when
    /// it cannot be executed, 125 for any other failure of dadd's own (a bad
    /// spec, setup).
    ///
    /// Without --foreground, the runner detaches (a new session, no terminal,
    /// output to runner.log in the run directory), prints the run directory and
    /// its pid, and this command exits 0 at once.
    Run(Box<RunArgs>),
    /// Fetch a spec's artifacts into DIR and print how each was served.
    Fetch {
        /// The spec, JSON or YAML (by its extension; `-` reads standard input).
        spec: PathBuf,
        /// Where the artifacts go (created if missing).
        dir: PathBuf,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Serve the master's HTTP API: take specs, receive the runners' states and
    /// logs, keep them in a database, host files. Prints the URL it listens on.
    Master(MasterArgs),
    /// Be a host of the cluster: heartbeat to the master, start the processes it
    /// assigns (each through a detached `dadd run`), forward their states and the
    /// logs of failures, kill what it asks to kill. Stops on SIGINT, SIGTERM or
    /// SIGHUP, leaving the processes running; a worker started again goes on
    /// where it was.
    Worker(WorkerArgs),
    /// A cluster of one machine: a master (SQLite, on loopback) and a worker in
    /// one process. Prints the master's URL and its web page's; `dadd submit`,
    /// `dadd ps`, `dadd logs` then talk to it. Stops on SIGINT, SIGTERM or
    /// SIGHUP, leaving running processes running.
    Up(UpArgs),
    #[command(flatten)]
    Client(ClientCommand),
}

/// The commands that call the master.
#[derive(Debug, Subcommand)]
enum ClientCommand {
    /// Submit a spec to the master; prints the new process's id.
    Submit {
        /// The spec, JSON or YAML (by its extension; `-` reads standard input).
        spec: PathBuf,
        #[command(flatten)]
        master: MasterConnection,
    },
    /// List the master's processes, newest first.
    Ps {
        /// Print the master's list as JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        master: MasterConnection,
    },
    /// Show a process: its details, its spec and its state history.
    Show {
        /// The process id.
        id: String,
        #[command(flatten)]
        master: MasterConnection,
    },
    /// Print a process's log (its worker puts it on the master when the run
    /// ends).
    Logs {
        /// The process id.
        id: String,
        #[command(flatten)]
        master: MasterConnection,
    },
    /// Ask the master to kill a process (its host kills it at its next
    /// heartbeat).
    Kill {
        /// The process id.
        id: String,
        #[command(flatten)]
        master: MasterConnection,
    },
    /// List the master's hosts (workers): up or down, last heartbeat, how many
    /// processes each runs of how many it may.
    Hosts {
        /// Make the master forget this host instead.
        #[arg(long, value_name = "NAME")]
        remove: Option<String>,
        #[command(flatten)]
        master: MasterConnection,
    },
    /// Upload a file to the master's file store; prints the URL a spec's
    /// download_urls can fetch it from.
    Put {
        /// The local file.
        file: PathBuf,
        /// Its path in the store (default: the file's name).
        path: Option<String>,
        #[command(flatten)]
        master: MasterConnection,
    },
}

/// Where the master is, for the commands that call it.
#[derive(Debug, Args)]
struct MasterConnection {
    /// The master's URL.
    #[arg(long, env = "DADD_MASTER", default_value = dadd::client::DEFAULT_MASTER_URL)]
    master: String,
    /// The cluster's bearer token.
    #[arg(long, env = "DADD_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl MasterConnection {
    fn client(self) -> anyhow::Result<MasterClient> {
        Ok(MasterClient::new(&self.master, self.token)?)
    }
}

/// `dadd up`'s options.
#[derive(Debug, Args)]
struct UpArgs {
    /// The master's address: loopback only (there is no token).
    #[arg(long, default_value = dadd::master::DEFAULT_LISTEN)]
    listen: std::net::SocketAddr,
    /// The master's directory (default: as `dadd master`'s).
    #[arg(long, env = "DADD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    worker: HostArgs,
}

/// `dadd worker`'s options; each wins over the same key in the config file.
#[derive(Debug, Args)]
struct WorkerArgs {
    /// The master.
    #[arg(long, env = "DADD_MASTER")]
    master: Option<Url>,
    /// The master's bearer token (also handed to the runners).
    #[arg(long, env = "DADD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(flatten)]
    host: HostArgs,
}

/// A worker's options, in `dadd worker` and `dadd up`.
#[derive(Debug, Args)]
struct HostArgs {
    /// The host's config (TOML): master, token, name, max_processes, state_dir,
    /// cache_dir, redis, prepared_copies; [smtp], which the runners mail failures with.
    #[arg(long, env = "DADD_CONFIG")]
    config: Option<PathBuf>,
    /// This host's name on the master (default: the machine's host name).
    #[arg(long)]
    name: Option<String>,
    /// How many processes run at once (default: the number of CPUs).
    #[arg(long)]
    max_processes: Option<u32>,
    /// Where the processes it started are recorded (default:
    /// $XDG_STATE_HOME/dadd/worker, else ~/.local/state/dadd/worker).
    #[arg(long, env = "DADD_STATE_DIR")]
    state_dir: Option<PathBuf>,
    #[command(flatten)]
    cache: CacheArgs,
}

/// `dadd master`'s options.
#[derive(Debug, Args)]
struct MasterArgs {
    /// The address to listen on. Anything but loopback needs a token.
    #[arg(long, default_value = dadd::master::DEFAULT_LISTEN)]
    listen: std::net::SocketAddr,
    /// The master's directory: the database, files/ (default:
    /// $XDG_DATA_HOME/dadd/master, else ~/.local/share/dadd/master).
    #[arg(long, env = "DADD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The database URL (default: sqlite:DATA_DIR/dadd.sqlite3).
    #[arg(long, env = "DADD_DATABASE", hide_env_values = true)]
    database: Option<String>,
    /// The bearer token every call must present.
    #[arg(long, env = "DADD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The limit on a process's log, in bytes.
    #[arg(long, default_value_t = dadd::master::DEFAULT_MAX_LOG_BYTES)]
    max_log_bytes: usize,
    /// The limit on a file in the file store, in bytes.
    #[arg(long, default_value_t = dadd::master::DEFAULT_MAX_FILE_BYTES)]
    max_file_bytes: u64,
    /// How often workers send a heartbeat (they are told in each answer).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    heartbeat_every: Duration,
    /// How long a host may go without a heartbeat before it is down: its
    /// unstarted work goes to other hosts, its running processes show as lost.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    host_timeout: Duration,
}

/// `dadd run`'s options.
#[derive(Debug, Args)]
struct RunArgs {
    /// The spec, JSON or YAML (by its extension; `-` reads standard input).
    spec: PathBuf,
    /// Stay in the foreground and exit with the command's status.
    #[arg(long)]
    foreground: bool,
    /// The run directory, created if missing, which must be empty (default: a
    /// new temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// How long a timed-out process group has between SIGTERM and SIGKILL.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    kill_grace: Duration,
    /// The host's config (TOML): [smtp] for failure mail, master, token,
    /// cache_dir, redis, prepared_copies.
    #[arg(long, env = "DADD_CONFIG")]
    config: Option<PathBuf>,
    /// Report states (and the run's log, when it ends) to this master.
    #[arg(long)]
    master: Option<Url>,
    /// Report to no master, even when the config names one (a worker's runners:
    /// the worker forwards their states).
    #[arg(long, conflicts_with = "master")]
    no_master: bool,
    /// The master's bearer token.
    #[arg(long, env = "DADD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The process id on the master (default: a new one).
    #[arg(long)]
    id: Option<String>,
    /// Where a detached runner's pid is written (default: runner.pid in the run
    /// directory).
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Where the states are recorded, a JSON line each (default: state.jsonl in
    /// the run directory, which is removed after a success).
    #[arg(long)]
    state_file: Option<PathBuf>,
    /// Where the command's output (output.log) is kept once the run ended, so
    /// that it outlives the run directory a success removes.
    #[arg(long)]
    log_copy: Option<PathBuf>,
    /// The detached runner itself: its run directory was made, and its spec
    /// written there, by the `dadd run` that started it.
    #[arg(long, hide = true)]
    detached: bool,
    #[command(flatten)]
    cache: CacheArgs,
}

/// Where artifacts are cached.
#[derive(Debug, Args)]
struct CacheArgs {
    /// The artifact cache (default: $XDG_CACHE_HOME/dadd/artifacts, else
    /// ~/.cache/dadd/artifacts).
    #[arg(long, env = "DADD_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// A Redis shared by the hosts, behind this host's cache (redis://host:port).
    #[arg(long, env = "DADD_REDIS")]
    redis: Option<String>,
    /// Keep copies of cached artifacts ready for the next runs, up to this many
    /// bytes in all: a repeat then moves a copy in rather than copying (on a file
    /// system without reflinks, such as ext4), at the cost of that disk space
    /// (default: 4 GiB for `dadd run`, none for `dadd fetch`; 0 for none; none are
    /// made where the cache's file system has reflinks).
    #[arg(long, env = "DADD_PREPARED_COPIES", value_name = "BYTES")]
    prepared_copies: Option<u64>,
}

/// The exit status of `dadd run` when dadd itself fails (as `timeout(1)` and
/// `env(1)` do).
const RUN_FAILED: u8 = 125;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("DADD_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("dadd: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let (result, failure_status) = match cli.command {
        Command::Run(args) => (runtime.block_on(run(*args)), RUN_FAILED),
        Command::Fetch { spec, dir, cache } => {
            (runtime.block_on(fetch(&spec, &dir, &cache)).map(|()| 0), 1)
        }
        Command::Master(args) => (runtime.block_on(master(args)).map(|()| 0), 1),
        Command::Worker(args) => (runtime.block_on(worker(args)).map(|()| 0), 1),
        Command::Up(args) => (runtime.block_on(up(args)).map(|()| 0), 1),
        Command::Client(command) => (runtime.block_on(call_master(command)).map(|()| 0), 1),
    };
    match result {
        Ok(status) => ExitCode::from(status),
        Err(error) => {
            eprintln!("dadd: {}", dadd::explain(error.as_ref()));
            ExitCode::from(failure_status)
        }
    }
}

/// The detached runner's own output (its log lines), in the run directory.
const RUNNER_LOG: &str = "runner.log";
/// The detached runner's pid, in the run directory unless `--pid-file` says.
const PID_FILE: &str = "runner.pid";

/// `dadd run`: the exit status of the command, as [`RunOutcome::exit_code`]
/// says; 0 at once when it detaches.
async fn run(mut args: RunArgs) -> anyhow::Result<u8> {
    let config = match &args.config {
        Some(path) => HostConfig::from_file(path).context("the config")?,
        None => HostConfig::default(),
    };
    let spec = load_spec(&args.spec)?;
    if !args.no_master {
        args.master = args.master.take().or_else(|| config.master.clone());
    }
    args.token = args.token.take().or_else(|| config.token.clone());
    args.cache.cache_dir = args
        .cache
        .cache_dir
        .take()
        .or_else(|| config.cache_dir.clone());
    args.cache.redis = args.cache.redis.take().or_else(|| config.redis.clone());
    args.cache.prepared_copies = args.cache.prepared_copies.or(config.prepared_copies);
    let id = match (&args.id, &args.master) {
        (Some(id), _) => Some(id.clone()),
        (None, Some(_)) => Some(new_process_id()),
        (None, None) => None,
    };
    if !args.foreground && !args.detached {
        return detach(&args, &spec, id.as_deref());
    }
    let master = match (&args.master, &id) {
        (Some(url), Some(id)) => Some(
            MasterSink::new(url, id, args.token.clone())
                .with_context(|| format!("the master {url}"))?,
        ),
        _ => None,
    };
    let mut runner =
        Runner::new(build_fetcher(&args.cache, None, fetcher::DEFAULT_PREPARED_COPIES).await?)
            .kill_grace(args.kill_grace);
    if let Some(smtp) = config.smtp {
        let mail = erroremail::ErrorEmail::new(smtp.with_default_subject(
            erroremail::SubjectTemplate::parse("dadd: {message}").map_err(anyhow::Error::msg)?,
        ))
        .context("the [smtp] config")?;
        runner = runner.mail_failures(mail);
    }
    let stop = stop_signals().context("listening for signals")?;
    let dir = if args.detached {
        let dir = args.dir.as_deref().context("--detached needs --dir")?;
        let pid_file = args.pid_file.clone().unwrap_or_else(|| dir.join(PID_FILE));
        // When setsid(1) had to fork, this is the runner's pid, not the one the
        // starter wrote.
        write_pid(&pid_file, std::process::id())?;
        dir.canonicalize()
            .with_context(|| format!("the run directory {}", dir.display()))?
    } else {
        make_run_dir(args.dir.as_deref())?
    };
    let mut file = FileStateSink::new(
        args.state_file
            .clone()
            .unwrap_or_else(|| dir.join(STATE_FILE)),
    );
    if let Some(copy) = &args.log_copy {
        file = file.with_log_copy(std::path::absolute(copy)?);
    }
    let outcome = match master {
        // The file too: the states a master that is down missed are still there.
        Some(master) => run_with(&runner, &spec, &dir, &(file, master), stop).await,
        None => run_with(&runner, &spec, &dir, &file, stop).await,
    };
    if let Some(reason) = outcome.failure() {
        eprintln!(
            "dadd: {}{reason}; the run directory is kept: {}",
            spec.name
                .as_deref()
                .map(|name| format!("{name}: "))
                .unwrap_or_default(),
            outcome.dir.display()
        );
    } else if outcome.kept {
        eprintln!("dadd: the run directory is kept: {}", outcome.dir.display());
    }
    // Statuses beyond a byte (a negative one) still have to read as a failure.
    Ok(u8::try_from(outcome.exit_code()).unwrap_or(RUN_FAILED))
}

async fn run_with(
    runner: &Runner,
    spec: &Spec,
    dir: &Path,
    sink: &dyn StateSink,
    stop: impl Future<Output = i32>,
) -> RunOutcome {
    let outcome = runner.run_until(spec, dir, sink, stop).await;
    close(runner.fetcher()).await;
    outcome
}

/// A process id for the master, unique enough on a cluster: this host's time in
/// milliseconds and this process's id.
fn new_process_id() -> String {
    format!(
        "run-{}-{}",
        jiff::Timestamp::now().as_millisecond(),
        std::process::id()
    )
}

/// Starts the runner detached: the same `dadd run`, with the run directory made
/// and the spec written there, in a session of its own (setsid(1)), standard
/// input from /dev/null and its output in `runner.log`. Prints the run directory
/// and the runner's pid, which it also writes to the pid file.
fn detach(args: &RunArgs, spec: &Spec, id: Option<&str>) -> anyhow::Result<u8> {
    let dir = make_run_dir(args.dir.as_deref())?;
    let spec_path = dir.join(SPEC_FILE);
    std::fs::write(&spec_path, serde_json::to_vec_pretty(spec)?)
        .with_context(|| format!("writing {}", spec_path.display()))?;
    let log_path = dir.join(RUNNER_LOG);
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let pid_file = match &args.pid_file {
        Some(path) => std::path::absolute(path)?,
        None => dir.join(PID_FILE),
    };
    let exe = std::env::current_exe().context("finding the dadd binary")?;
    // A new session (no controlling terminal, its own process group) needs
    // setsid(2), which safe Rust cannot call between fork and exec: setsid(1)
    // does it. Without it, a process group of its own is the next best thing.
    let mut command = match find_program("setsid") {
        Some(setsid) => {
            let mut command = std::process::Command::new(setsid);
            command.arg(&exe);
            command
        }
        None => {
            tracing::warn!(
                "setsid(1) not found: the runner gets its own process group, not its own session"
            );
            let mut command = std::process::Command::new(&exe);
            std::os::unix::process::CommandExt::process_group(&mut command, 0);
            command
        }
    };
    command
        .arg("run")
        .arg(&spec_path)
        .arg("--detached")
        .arg("--dir")
        .arg(&dir)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg("--kill-grace")
        .arg(humantime::format_duration(args.kill_grace).to_string());
    if let Some(config) = &args.config {
        command.arg("--config").arg(std::path::absolute(config)?);
    }
    if let Some(master) = &args.master {
        command.arg("--master").arg(master.as_str());
    }
    if args.no_master {
        command.arg("--no-master");
    }
    if let Some(state_file) = &args.state_file {
        command
            .arg("--state-file")
            .arg(std::path::absolute(state_file)?);
    }
    if let Some(log_copy) = &args.log_copy {
        command
            .arg("--log-copy")
            .arg(std::path::absolute(log_copy)?);
    }
    if let Some(id) = id {
        command.arg("--id").arg(id);
    }
    if let Some(cache_dir) = &args.cache.cache_dir {
        command
            .arg("--cache-dir")
            .arg(std::path::absolute(cache_dir)?);
    }
    if let Some(redis) = &args.cache.redis {
        command.arg("--redis").arg(redis);
    }
    if let Some(bytes) = args.cache.prepared_copies {
        command.arg("--prepared-copies").arg(bytes.to_string());
    }
    match &args.token {
        // In the environment, not on the command line that `ps` shows.
        Some(token) => command.env("DADD_TOKEN", token),
        None => command.env_remove("DADD_TOKEN"),
    };
    let child = command
        .env_remove("DADD_CONFIG")
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the detached runner")?;
    let pid = child.id();
    write_pid(&pid_file, pid)?;
    println!("dir: {}", dir.display());
    println!("pid: {pid}");
    if let Some(id) = id {
        println!("id: {id}");
    }
    // Dropping the child neither waits for it nor kills it.
    Ok(0)
}

fn write_pid(path: &Path, pid: u32) -> anyhow::Result<()> {
    // Written whole, then renamed: a reader never sees half a pid. The starter
    // and the detached runner both write it, maybe at once: each its own
    // partial file, or one's rename would take the other's away from under it
    // (and the runner, failing to write its pid, would end before its command
    // started).
    let partial = path.with_extension(format!("pid.{}.partial", std::process::id()));
    std::fs::write(&partial, format!("{pid}\n"))
        .and_then(|()| std::fs::rename(&partial, path))
        .with_context(|| format!("writing the pid file {}", path.display()))
}

/// The first `name` on `PATH`, then in /usr/bin and /bin.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// `dadd fetch`: the artifacts into `dir`, and the report on standard output.
async fn fetch(spec_path: &Path, dir: &Path, cache: &CacheArgs) -> anyhow::Result<()> {
    let spec = load_spec(spec_path)?;
    let bars = FetchBars::stderr();
    // A one-off fetch makes no copies ahead unless told to (the process would wait
    // for them before it ends).
    let fetcher = build_fetcher(cache, Some(&bars), 0).await?;
    let report = fetcher
        .fetch(&spec.download_urls, dir)
        .await
        .with_context(|| format!("fetching into {}", dir.display()));
    // The report as soon as the files are in place; then the cache's copies of the
    // downloads are stored (synced to disk) before the process ends.
    if let Ok(report) = &report {
        println!("{report}");
    }
    close(&fetcher).await;
    report.map(drop)
}

/// `dadd master`: serves until SIGINT, SIGTERM or SIGHUP.
async fn master(args: MasterArgs) -> anyhow::Result<()> {
    let data_dir = match args.data_dir {
        Some(dir) => dir,
        None => default_data_dir()
            .context("no data directory: set XDG_DATA_HOME or HOME, or pass --data-dir")?,
    };
    let mut config = dadd::master::MasterConfig::new(args.listen, data_dir);
    config.database = args.database;
    config.token = args.token;
    config.max_log_bytes = args.max_log_bytes;
    config.max_file_bytes = args.max_file_bytes;
    config.heartbeat_every = args.heartbeat_every;
    config.host_timeout = args.host_timeout;
    let master = dadd::master::Master::bind(config).await?;
    let stop = stopping_on_signal()?;
    println!("http://{}", master.local_addr()?);
    master.serve(stop).await?;
    Ok(())
}

/// `dadd worker`: works until SIGINT, SIGTERM or SIGHUP.
async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let host = args.host.read_config()?;
    let master = args
        .master
        .or(host.master.clone())
        .context("no master: pass --master, or set master in the config")?;
    let token = args.token.or(host.token.clone());
    let worker = dadd::worker::Worker::new(args.host.worker_config(host, master, token)?)?;
    let stop = stopping_on_signal()?;
    worker.run(stop).await?;
    Ok(())
}

impl HostArgs {
    /// The config file, when one is given.
    fn read_config(&self) -> anyhow::Result<HostConfig> {
        match &self.config {
            Some(path) => HostConfig::from_file(path).context("the config"),
            None => Ok(HostConfig::default()),
        }
    }

    /// A worker's config: the command line, else the config file, else the
    /// defaults.
    fn worker_config(
        self,
        host: HostConfig,
        master: Url,
        token: Option<String>,
    ) -> anyhow::Result<dadd::worker::WorkerConfig> {
        let name = match self.name.or(host.name) {
            Some(name) => name,
            None => dadd::worker::default_name()
                .context("no host name: pass --name, or set name in the config")?,
        };
        let state_dir = match self.state_dir.or(host.state_dir) {
            Some(dir) => dir,
            None => dadd::worker::default_state_dir().context(
                "no state directory: set XDG_STATE_HOME or HOME, pass --state-dir, or set \
                 state_dir in the config",
            )?,
        };
        let mut config = dadd::worker::WorkerConfig::new(name, master, state_dir);
        config.token = token;
        config.cache_dir = self.cache.cache_dir.or(host.cache_dir);
        config.redis = self.cache.redis.or(host.redis);
        config.prepared_copies = self.cache.prepared_copies.or(host.prepared_copies);
        config.host_config = self.config;
        if let Some(max) = self.max_processes.or(host.max_processes) {
            config.max_processes = max;
        }
        config.program = std::env::current_exe().context("finding the dadd binary")?;
        Ok(config)
    }
}

/// `dadd up`: a master and a worker, until SIGINT, SIGTERM or SIGHUP.
async fn up(args: UpArgs) -> anyhow::Result<()> {
    let host = args.worker.read_config()?;
    let data_dir = match args.data_dir {
        Some(dir) => dir,
        None => default_data_dir()
            .context("no data directory: set XDG_DATA_HOME or HOME, or pass --data-dir")?,
    };
    let master_config = dadd::master::MasterConfig::new(args.listen, data_dir.clone());
    let master = match dadd::master::Master::bind(master_config).await {
        Err(error @ dadd::master::MasterError::Listen { .. }) => {
            anyhow::bail!(
                "{error}; is a `dadd up` or `dadd master` already running there? `dadd ps` \
                 talks to it; or pass --listen 127.0.0.1:PORT (and --master \
                 http://127.0.0.1:PORT to the client commands)"
            );
        }
        result => result?,
    };
    let url =
        Url::parse(&format!("http://{}", master.local_addr()?)).context("the master's URL")?;

    // No token: the master is on loopback.
    let config = args.worker.worker_config(host, url.clone(), None)?;
    let worker = dadd::worker::Worker::new(config)?;

    let stop = stopping_on_signal()?;
    let stopping = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let stopping = stopping.clone();
        async move {
            stop.await;
            stopping.cancel();
        }
    });
    println!("master:   {}", url.as_str().trim_end_matches('/'));
    println!("web page: {url}");
    println!(
        "worker:   {} ({} processes at once; state in {})",
        worker.config().name,
        worker.config().max_processes,
        worker.config().state_dir.display()
    );
    println!("data:     {}", data_dir.display());
    println!("Submit a spec with `dadd submit SPEC`, then `dadd ps` and `dadd logs ID`.");
    println!("Ctrl-C stops the master and the worker; running processes go on.");
    std::io::stdout().flush().ok();
    // Either one failing stops the other.
    let serve = {
        let stopping = stopping.clone();
        async move {
            let result = master.serve(stopping.clone().cancelled_owned()).await;
            stopping.cancel();
            result.context("the master")
        }
    };
    let work = {
        let stopping = stopping.clone();
        async move {
            let result = worker.run(stopping.clone().cancelled_owned()).await;
            stopping.cancel();
            result.context("the worker")
        }
    };
    let (served, worked) = tokio::join!(serve, work);
    served.and(worked)
}

/// The commands that call the master: each prints what it got on standard
/// output.
async fn call_master(command: ClientCommand) -> anyhow::Result<()> {
    let now = jiff::Timestamp::now();
    match command {
        ClientCommand::Submit { spec, master } => {
            let (text, format) = read_spec_text(&spec)?;
            let submitted = master.client()?.submit(&text, format).await?;
            if let Some(warning) = &submitted.warning {
                eprintln!("dadd: warning: {warning}");
            }
            println!("{}", submitted.id);
        }
        ClientCommand::Ps { json, master } => {
            let processes = master.client()?.list().await?;
            if json {
                let list = dadd::api::ProcessList { processes };
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", render::process_table(&processes, now));
            }
        }
        ClientCommand::Show { id, master } => {
            let detail = master.client()?.show(&id).await?;
            print!("{}", render::process_detail(&detail, now));
        }
        ClientCommand::Logs { id, master } => {
            let log = master.client()?.log(&id).await?;
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(&log)
                .and_then(|()| stdout.flush())
                .context("writing the log to standard output")?;
        }
        ClientCommand::Kill { id, master } => {
            let process = master.client()?.kill(&id).await?;
            println!("{}", render::kill_answer(&process));
        }
        ClientCommand::Hosts { remove, master } => {
            let client = master.client()?;
            match remove {
                Some(name) => {
                    client.remove_host(&name).await?;
                    println!("removed host {name}");
                }
                None => print!("{}", render::host_table(&client.hosts().await?, now)),
            }
        }
        ClientCommand::Put { file, path, master } => {
            let path = match path {
                Some(path) => path,
                None => file
                    .file_name()
                    .and_then(|name| name.to_str())
                    .with_context(|| {
                        format!(
                            "{} has no file name usable in a URL: give the PATH in the store",
                            file.display()
                        )
                    })?
                    .to_owned(),
            };
            let uploaded = master.client()?.put_file(&file, &path).await?;
            println!("{}", uploaded.url);
        }
    }
    Ok(())
}

/// A spec's text as the user wrote it (the master checks it), and its format by
/// the file's extension (`-`: standard input, detected).
fn read_spec_text(path: &Path) -> anyhow::Result<(String, Format)> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the spec from standard input")?;
        Ok((text, Format::Detect))
    } else {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the spec {}", path.display()))?;
        Ok((text, Format::of_path(path)))
    }
}

/// $XDG_DATA_HOME/dadd/master, else ~/.local/share/dadd/master.
fn default_data_dir() -> Option<PathBuf> {
    let nonempty = |name| std::env::var_os(name).filter(|value| !value.is_empty());
    let data = nonempty("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| nonempty("HOME").map(|home| PathBuf::from(home).join(".local/share")))?;
    Some(data.join("dadd/master"))
}

/// Completes with the number of the first SIGINT, SIGTERM or SIGHUP dadd receives.
/// The command runs in its own process group, so a terminal's Ctrl-C reaches dadd
/// only; the runner passes it on to the whole group as SIGTERM.
/// Completes on SIGINT, SIGTERM or SIGHUP, saying which: when a master or a
/// worker is to stop.
fn stopping_on_signal() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    let stop = stop_signals().context("listening for signals")?;
    Ok(async move {
        let signal = stop.await;
        tracing::info!(signal, "stopping");
    })
}

fn stop_signals() -> std::io::Result<impl Future<Output = i32>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    Ok(async move {
        let kind = tokio::select! {
            _ = interrupt.recv() => SignalKind::interrupt(),
            _ = terminate.recv() => SignalKind::terminate(),
            _ = hangup.recv() => SignalKind::hangup(),
        };
        kind.as_raw_value()
    })
}

fn load_spec(path: &Path) -> anyhow::Result<Spec> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the spec from standard input")?;
        Spec::parse(&text, Format::Detect).context("the spec on standard input")
    } else {
        Spec::from_file(path).with_context(|| format!("the spec {}", path.display()))
    }
}

/// The fetcher: this host's file cache, with the shared Redis tier behind it when
/// one is given and reachable (without it, a run still works, only less cheaply).
/// `prepared_copies`: the budget of copies made ahead when the host says nothing.
async fn build_fetcher(
    cache: &CacheArgs,
    bars: Option<&FetchBars>,
    prepared_copies: u64,
) -> anyhow::Result<Fetcher> {
    let dir = cache
        .cache_dir
        .clone()
        .or_else(fetcher::default_cache_dir)
        .context("no artifact cache: set XDG_CACHE_HOME or HOME, or pass --cache-dir")?;
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating the artifact cache {}", dir.display()))?;
    let mut builder = Fetcher::builder()
        .cache_dir(dir)
        .prepared_copies(cache.prepared_copies.unwrap_or(prepared_copies));
    if let Some(url) = &cache.redis {
        match cachecontrol::RedisCache::new(url.as_str()).await {
            Ok(redis) => builder = builder.shared_tier(redis),
            Err(error) => {
                tracing::warn!(%url, %error, "the shared Redis tier is unavailable: going on without it");
            }
        }
    }
    if let Some(bars) = bars {
        builder = builder.on_progress(bars.callback());
    }
    builder.build().context("opening the artifact cache")
}

async fn close(fetcher: &Fetcher) {
    if let Err(error) = fetcher.close().await {
        tracing::warn!(%error, "closing the artifact cache");
    }
}
