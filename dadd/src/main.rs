//! `dadd`: run a spec on this host, or fetch its artifacts.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use dadd::progress::FetchBars;
use dadd::runner::{FileStateSink, Runner, STATE_FILE, make_run_dir};
use dadd::spec::{Format, Spec};
use fetcher::Fetcher;
use tracing_subscriber::EnvFilter;

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
    Run {
        /// The spec, JSON or YAML (by its extension; `-` reads standard input).
        spec: PathBuf,
        /// Stay in the foreground and exit with the command's status (running
        /// detached comes with the worker).
        #[arg(long)]
        foreground: bool,
        /// The run directory, created if missing, which must be empty (default: a
        /// new temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// How long a timed-out process group has between SIGTERM and SIGKILL.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        kill_grace: Duration,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Fetch a spec's artifacts into DIR and print how each was served.
    Fetch {
        /// The spec, JSON or YAML (by its extension; `-` reads standard input).
        spec: PathBuf,
        /// Where the artifacts go (created if missing).
        dir: PathBuf,
        #[command(flatten)]
        cache: CacheArgs,
    },
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
        Command::Run {
            spec,
            foreground,
            dir,
            kill_grace,
            cache,
        } => (
            runtime.block_on(run(&spec, foreground, dir.as_deref(), kill_grace, &cache)),
            RUN_FAILED,
        ),
        Command::Fetch { spec, dir, cache } => {
            (runtime.block_on(fetch(&spec, &dir, &cache)).map(|()| 0), 1)
        }
    };
    match result {
        Ok(status) => ExitCode::from(status),
        Err(error) => {
            eprintln!("dadd: {error:#}");
            ExitCode::from(failure_status)
        }
    }
}

/// `dadd run`: the exit status of the command, as [`RunOutcome::exit_code`]
/// says.
///
/// [`RunOutcome::exit_code`]: dadd::runner::RunOutcome::exit_code
async fn run(
    spec_path: &Path,
    foreground: bool,
    dir: Option<&Path>,
    kill_grace: Duration,
    cache: &CacheArgs,
) -> anyhow::Result<u8> {
    if !foreground {
        bail!("running detached is not implemented yet: pass --foreground");
    }
    let spec = load_spec(spec_path)?;
    let stop = stop_signals().context("listening for signals")?;
    let fetcher = build_fetcher(cache, None).await?;
    let dir = make_run_dir(dir)?;
    let sink = FileStateSink::new(dir.join(STATE_FILE));
    let outcome = Runner::new(fetcher.clone())
        .kill_grace(kill_grace)
        .run_until(&spec, &dir, &sink, stop)
        .await;
    close(&fetcher).await;
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

/// `dadd fetch`: the artifacts into `dir`, and the report on standard output.
async fn fetch(spec_path: &Path, dir: &Path, cache: &CacheArgs) -> anyhow::Result<()> {
    let spec = load_spec(spec_path)?;
    let bars = FetchBars::stderr();
    let fetcher = build_fetcher(cache, Some(&bars)).await?;
    let report = fetcher
        .fetch(&spec.download_urls, dir)
        .await
        .with_context(|| format!("fetching into {}", dir.display()));
    close(&fetcher).await;
    println!("{}", report?);
    Ok(())
}

/// Completes with the number of the first SIGINT, SIGTERM or SIGHUP dadd receives.
/// The command runs in its own process group, so a terminal's Ctrl-C reaches dadd
/// only; the runner passes it on to the whole group as SIGTERM.
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
async fn build_fetcher(cache: &CacheArgs, bars: Option<&FetchBars>) -> anyhow::Result<Fetcher> {
    let dir = cache
        .cache_dir
        .clone()
        .or_else(fetcher::default_cache_dir)
        .context("no artifact cache: set XDG_CACHE_HOME or HOME, or pass --cache-dir")?;
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating the artifact cache {}", dir.display()))?;
    let mut builder = Fetcher::builder().cache_dir(dir);
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
