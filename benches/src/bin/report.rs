//! Prints the benches' results as the README's Markdown table: for each question,
//! our time, the floor's, the peers', the ratios, and whether each aim holds; then
//! the peak-memory check and the machine.
//!
//! Run `cargo bench -p benches` first, then `cargo run -p benches --bin report`. It
//! reads criterion's estimates where criterion wrote them (see
//! [`benches::results::criterion_dir`]); a benchmark that has not run shows as `-`.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use benches::BodySize;
use benches::results::{PeakMemory, criterion_dir, mean_ns};

/// What one row of the table compares.
struct Row {
    group: &'static str,
    store: &'static str,
    ours: &'static str,
    floor: &'static str,
    peers: &'static [&'static str],
    aims: &'static [Aim],
}

/// An aim of the issue, as a ratio of two means.
enum Aim {
    /// Ours takes at most this many times the floor.
    WithinFloor(f64),
    /// The peer takes at least this many times ours.
    FasterThan(&'static str, f64),
}

const MOKA: &str = "http-cache-moka";
const CACACHE: &str = "http-cache-cacache";

const ROWS: &[Row] = &[
    Row {
        group: "hit",
        store: "memory",
        ours: "ours-memory",
        floor: "floor-memory",
        peers: &[MOKA],
        aims: &[Aim::WithinFloor(1.5), Aim::FasterThan(MOKA, 3.0)],
    },
    Row {
        group: "hit",
        store: "file",
        ours: "ours-file",
        floor: "floor-file",
        peers: &[CACACHE],
        aims: &[Aim::FasterThan(CACACHE, 3.0)],
    },
    Row {
        group: "hit",
        store: "redis",
        ours: "ours-redis",
        floor: "floor-redis",
        peers: &[],
        aims: &[Aim::WithinFloor(1.3)],
    },
    Row {
        group: "miss",
        store: "memory",
        ours: "ours-memory",
        floor: "reqwest",
        peers: &[MOKA, CACACHE],
        aims: &[Aim::WithinFloor(1.1)],
    },
    Row {
        group: "miss",
        store: "file",
        ours: "ours-file",
        floor: "reqwest",
        peers: &[MOKA, CACACHE],
        aims: &[Aim::WithinFloor(1.1)],
    },
    Row {
        group: "revalidate",
        store: "memory",
        ours: "ours-memory",
        floor: "floor-revalidate",
        peers: &[MOKA],
        aims: &[],
    },
    Row {
        group: "revalidate",
        store: "file",
        ours: "ours-file",
        floor: "floor-revalidate",
        peers: &[CACACHE],
        aims: &[],
    },
    Row {
        group: "revalidate",
        store: "redis",
        ours: "ours-redis",
        floor: "floor-revalidate",
        peers: &[],
        aims: &[],
    },
];

/// The peak-memory aim: a 1 GiB body stored and read back under this.
const PEAK_LIMIT: u64 = 64 << 20;

fn main() -> anyhow::Result<()> {
    let dir = criterion_dir();
    let mut out = String::new();
    writeln!(
        out,
        "| benchmark | body | ours | floor | peers | ours / floor | peer / ours | aim |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|---|")?;
    for row in ROWS {
        for size in BodySize::ALL {
            writeln!(out, "{}", table_row(&dir, row, size))?;
        }
    }
    writeln!(out)?;
    match PeakMemory::load(&dir) {
        Some(peak) => writeln!(
            out,
            "Peak memory: a {} MiB body stored in a FileCache ({:.1} s) and read back \
             ({:.1} s) with a peak RSS of {:.1} MiB; aim under {} MiB: {}.",
            peak.body_bytes >> 20,
            peak.store_seconds,
            peak.read_seconds,
            mib(peak.peak_rss_bytes),
            PEAK_LIMIT >> 20,
            verdict(peak.peak_rss_bytes < PEAK_LIMIT),
        )?,
        None => writeln!(
            out,
            "Peak memory: not measured (run the `peak_memory` bench)."
        )?,
    }
    writeln!(out)?;
    fetcher_table(&dir, &mut out)?;
    writeln!(out)?;
    writeln!(out, "Machine: {}", machine())?;
    writeln!(out, "Results from `{}`.", dir.display())?;
    print!("{out}");
    Ok(())
}

fn table_row(dir: &Path, row: &Row, size: BodySize) -> String {
    let time = |function: &str| mean_ns(dir, row.group, function, size.label());
    let ours = time(row.ours);
    let floor = time(row.floor);
    let peers: Vec<(&str, Option<f64>)> = row.peers.iter().map(|p| (*p, time(p))).collect();
    let peer_times = join(
        peers
            .iter()
            .map(|(name, t)| format!("{} {}", short(name), duration(*t))),
    );
    let peer_ratios = join(
        peers
            .iter()
            .map(|(name, t)| format!("{} {}", short(name), ratio(*t, ours))),
    );
    let aims = join(row.aims.iter().map(|aim| match aim {
        Aim::WithinFloor(at_most) => {
            let holds = ours.zip(floor).map(|(o, f)| o <= at_most * f);
            format!("≤ {at_most}× floor: {}", verdict_of(holds))
        }
        Aim::FasterThan(peer, at_least) => {
            let holds = time(peer).zip(ours).map(|(p, o)| p >= at_least * o);
            format!(
                "≥ {at_least}× faster than {}: {}",
                short(peer),
                verdict_of(holds)
            )
        }
    }));
    format!(
        "| {} {} | {} | {} | {} ({}) | {} | {} | {} | {} |",
        row.group,
        row.store,
        size.label(),
        duration(ours),
        duration(floor),
        row.floor,
        or_dash(peer_times),
        ratio(ours, floor),
        or_dash(peer_ratios),
        or_dash(aims),
    )
}

/// The fetcher's benches (`fetch`, `fetch_peak_memory`): a 1 GiB artifact.
fn fetcher_table(dir: &Path, out: &mut String) -> anyhow::Result<()> {
    let time = |group: &str, function: &str| mean_ns(dir, group, function, "1GiB");
    let first = time("fetch_first", "fetcher");
    let until_stored = time("fetch_first", "fetcher-until-stored");
    let plain = time("fetch_first", "plain");
    let two_copies = time("fetch_first", "plain-two-copies");
    let repeat = time("fetch_repeat", "fetcher");
    let linked = time("fetch_repeat", "fetcher-read-only");
    let kernel_copy = time("fetch_repeat", "fetcher-kernel-copy");
    let copy = time("fetch_repeat", "copy");
    writeln!(
        out,
        "| fetcher, 1 GiB | ours | floor | ours / floor | aim |"
    )?;
    writeln!(out, "|---|---|---|---|---|")?;
    let throughput = plain.zip(first).map(|(plain, first)| plain / first);
    writeln!(
        out,
        "| first fetch (downloaded into the run dir, which the cache copies after) | {} | {} (plain reqwest to a file) | {} | ≥ 0.9× the plain throughput ({}): {} |",
        duration(first),
        duration(plain),
        ratio(first, plain),
        throughput.map_or("-".to_owned(), |t| format!("{t:.2}×")),
        verdict_of(throughput.map(|t| t >= 0.9)),
    )?;
    for (name, other) in [
        (
            "(the same, until the cache's copy is synced and published too)",
            until_stored,
        ),
        (
            "(plain reqwest to two files at once: the least a fetch keeping a copy writes without reflinks)",
            two_copies,
        ),
    ] {
        let Some(other) = other else { continue };
        let throughput = plain.map(|plain| plain / other);
        writeln!(
            out,
            "| {name} | {} | {} | {} | ({} the plain throughput) |",
            duration(Some(other)),
            duration(plain),
            ratio(Some(other), plain),
            throughput.map_or("-".to_owned(), |t| format!("{t:.2}×")),
        )?;
    }
    // The aim is for the defaults; the other rows say what other settings cost.
    for (name, ours, aimed) in [
        (
            "repeat while fresh (the defaults: a copy prepared after the run before, moved in; a reflink where the file system shares blocks)",
            repeat,
            true,
        ),
        (
            "repeat while fresh, read-only with a digest (hard link)",
            linked,
            true,
        ),
        (
            "repeat while fresh, without prepared copies (`prepared_copies(0)`: a kernel copy)",
            kernel_copy,
            false,
        ),
    ] {
        // Not run (where the repeat is a reflink, it is the defaults' row).
        if ours.is_none() && !aimed {
            continue;
        }
        let speedup = first.zip(ours).map(|(first, ours)| first / ours);
        let speedup_text = speedup.map_or("-".to_owned(), |s| format!("{s:.1}×"));
        let aim = if aimed {
            format!(
                "≥ 10× faster than the first ({speedup_text}): {}",
                verdict_of(speedup.map(|s| s >= 10.0))
            )
        } else {
            format!("({speedup_text} faster than the first)")
        };
        writeln!(
            out,
            "| {name} | {} | {} (`std::fs::copy`) | {} | {aim} |",
            duration(ours),
            duration(copy),
            ratio(ours, copy),
        )?;
    }
    let peak = std::fs::read_to_string(dir.join("fetch_peak_memory.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|record| record["peak_rss_bytes"].as_u64());
    match peak {
        Some(peak) => writeln!(
            out,
            "\nFetcher peak memory: a 1 GiB artifact fetched, then fetched again, with a peak RSS of {:.1} MiB; aim under {} MiB: {}.",
            mib(peak),
            PEAK_LIMIT >> 20,
            verdict(peak < PEAK_LIMIT),
        )?,
        None => writeln!(
            out,
            "\nFetcher peak memory: not measured (run the `fetch_peak_memory` bench)."
        )?,
    }
    Ok(())
}

fn short(peer: &str) -> &str {
    peer.strip_prefix("http-cache-").unwrap_or(peer)
}

fn join(parts: impl Iterator<Item = String>) -> String {
    parts.collect::<Vec<_>>().join(", ")
}

fn or_dash(text: String) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text
    }
}

fn duration(ns: Option<f64>) -> String {
    match ns {
        None => "-".to_owned(),
        Some(ns) if ns < 1e3 => format!("{ns:.0} ns"),
        Some(ns) if ns < 1e6 => format!("{:.2} µs", ns / 1e3),
        Some(ns) if ns < 1e9 => format!("{:.2} ms", ns / 1e6),
        Some(ns) => format!("{:.2} s", ns / 1e9),
    }
}

fn ratio(numerator: Option<f64>, denominator: Option<f64>) -> String {
    match numerator.zip(denominator) {
        Some((n, d)) if d > 0.0 => format!("{:.2}×", n / d),
        _ => "-".to_owned(),
    }
}

fn verdict(holds: bool) -> &'static str {
    if holds { "**holds**" } else { "**missed**" }
}

fn verdict_of(holds: Option<bool>) -> &'static str {
    holds.map_or("not measured", verdict)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// CPU model, cores, memory, kernel and rustc, as this machine reports them.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split_once(':'))
        .map_or("unknown CPU", |(_, model)| model.trim())
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|meminfo| {
            meminfo
                .lines()
                .find(|line| line.starts_with("MemTotal:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or_else(
            || "unknown memory".to_owned(),
            |kib| format!("{:.0} GiB", kib as f64 / f64::from(1 << 20)),
        );
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_owned(), |k| k.trim().to_owned());
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let rustc = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .filter(|version| !version.is_empty())
        .unwrap_or_else(|| "rustc (version unknown)".to_owned());
    format!("{model}, {cores} cores, {memory}, Linux {kernel}, {rustc}")
}
