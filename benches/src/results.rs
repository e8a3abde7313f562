//! Where the results are: criterion's estimates, and the peak-memory check's record.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Criterion's output directory, found as criterion finds it: `$CRITERION_HOME`,
/// else `criterion/` in Cargo's target directory (`$CARGO_TARGET_DIR`, else what
/// `cargo metadata` says, else `target`).
pub fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    target_dir().join("criterion")
}

fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| serde_json::from_slice::<serde_json::Value>(&output.stdout).ok())
        .and_then(|metadata| metadata["target_directory"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// The mean time of one iteration of a benchmark, in nanoseconds, from criterion's
/// latest run (`<group>/<function>/<parameter>/new/estimates.json`); `None` when it
/// has not run.
pub fn mean_ns(dir: &Path, group: &str, function: &str, parameter: &str) -> Option<f64> {
    let path = dir
        .join(group)
        .join(function)
        .join(parameter)
        .join("new")
        .join("estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let estimates: serde_json::Value = serde_json::from_str(&text).ok()?;
    estimates["mean"]["point_estimate"].as_f64()
}

/// What the peak-memory check measured.
#[derive(Debug, Clone, PartialEq)]
pub struct PeakMemory {
    /// The body's size, in bytes.
    pub body_bytes: u64,
    /// The process's peak resident set (`VmHWM`), in bytes.
    pub peak_rss_bytes: u64,
    /// Seconds to fetch and store it (a miss).
    pub store_seconds: f64,
    /// Seconds to read it back (a hit from the file).
    pub read_seconds: f64,
}

impl PeakMemory {
    /// Where the check leaves its record: beside criterion's results.
    pub fn path(criterion_dir: &Path) -> PathBuf {
        criterion_dir.join("peak_memory.json")
    }

    /// Writes the record.
    pub fn save(&self, criterion_dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(criterion_dir)?;
        let json = serde_json::json!({
            "body_bytes": self.body_bytes,
            "peak_rss_bytes": self.peak_rss_bytes,
            "store_seconds": self.store_seconds,
            "read_seconds": self.read_seconds,
        });
        std::fs::write(Self::path(criterion_dir), serde_json::to_vec_pretty(&json)?)?;
        Ok(())
    }

    /// Reads the record; `None` when the check has not run.
    pub fn load(criterion_dir: &Path) -> Option<PeakMemory> {
        let text = std::fs::read_to_string(Self::path(criterion_dir)).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        Some(PeakMemory {
            body_bytes: json["body_bytes"].as_u64()?,
            peak_rss_bytes: json["peak_rss_bytes"].as_u64()?,
            store_seconds: json["store_seconds"].as_f64()?,
            read_seconds: json["read_seconds"].as_f64()?,
        })
    }
}

/// This process's peak resident set so far (`VmHWM` in `/proc/self/status`), in
/// bytes.
pub fn peak_rss() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .ok_or_else(|| anyhow::anyhow!("no VmHWM in /proc/self/status"))?;
    let kib: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib * 1024)
}
