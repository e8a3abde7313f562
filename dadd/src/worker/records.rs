//! The worker's memory: one directory per process it has recorded, under
//! `STATE_DIR/processes/`, which is what survives a restart of the worker or of
//! the machine.
//!
//! ```text
//! STATE_DIR/processes/ID/spec.json     the assignment's spec (what `dadd run` reads)
//! STATE_DIR/processes/ID/runner.pid    the detached runner's pid (the runner writes it)
//! STATE_DIR/processes/ID/state.jsonl   its states, a JSON line each (the runner appends)
//! STATE_DIR/processes/ID/delivered     how many of those lines the master acknowledged
//! ```
//!
//! A process is recorded when its directory exists: the directory is built in
//! `STATE_DIR/staging/`, synced, and renamed into place, so that a worker stopped
//! at any moment either has the whole record or none of it. It is forgotten the
//! same way backwards: renamed into `STATE_DIR/forgotten/`, then removed.
//!
//! Beside the records:
//!
//! ```text
//! STATE_DIR/tombstones   the ids forgotten, `ID TIMESTAMP` a line (appended, synced,
//!                        before the record goes; lines older than a week are
//!                        dropped when the worker starts)
//! STATE_DIR/instance     this worker's random instance id (made once)
//! ```
//!
//! A tombstone is what keeps a forgotten id from starting again when the master
//! offers it again (its database restored from a backup, a last state it
//! refused): a record is gone once forgotten, and an id without a record would
//! otherwise look new.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::api::{self, Assignment, State, StateChange};
use crate::runner::{FileStateSink, StateSink};

/// The spec of a recorded process.
pub(crate) const SPEC_FILE: &str = "spec.json";
/// The pid of its detached runner.
pub(crate) const PID_FILE: &str = "runner.pid";
/// Its states, as its runner records them.
pub(crate) const STATE_FILE: &str = "state.jsonl";
/// The log of its run, kept there by its runner (`dadd run --log-copy`) before
/// the run's last state.
pub(crate) const LOG_COPY: &str = "output.log";
/// There once the master acknowledged the log.
const LOG_DELIVERED_FILE: &str = "log-delivered";
/// How many lines of [`STATE_FILE`] the master acknowledged.
const DELIVERED_FILE: &str = "delivered";

const PROCESSES: &str = "processes";
const STAGING: &str = "staging";
const FORGOTTEN: &str = "forgotten";

/// Locked while a worker uses the state directory.
const LOCK_FILE: &str = "lock";
/// The ids forgotten, and when.
const TOMBSTONES_FILE: &str = "tombstones";
/// The worker's instance id.
const INSTANCE_FILE: &str = "instance";

/// How long a forgotten id is kept from starting again: longer than any master
/// goes on offering a process it was told about, shorter than forever.
pub(crate) const TOMBSTONES_KEPT: Duration = Duration::from_secs(7 * 24 * 3600);

/// The processes a worker has recorded, in its state directory.
#[derive(Debug)]
pub(crate) struct Records {
    root: PathBuf,
    /// Held (locked) as long as the records are open: two workers on one state
    /// directory would start each process twice.
    _lock: std::fs::File,
    /// The ids in [`TOMBSTONES_FILE`].
    tombstones: Mutex<HashSet<String>>,
    /// The worker's instance id, from [`INSTANCE_FILE`].
    instance: String,
}

/// Why the state directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    /// Another worker uses it.
    #[error("another worker uses it (it holds {})", .0.display())]
    Locked(PathBuf),
    /// It cannot be made, read or cleared.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Records {
    /// Opens (and makes) the state directory, clearing what a stopped worker left
    /// half done: records not yet in place, records not yet removed.
    pub(crate) fn open(root: &Path) -> Result<Records, OpenError> {
        std::fs::create_dir_all(root)?;
        let lock_path = root.join(LOCK_FILE);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(OpenError::Locked(lock_path)),
            Err(std::fs::TryLockError::Error(error)) => return Err(error.into()),
        }
        let tombstones = prune_tombstones(&root.join(TOMBSTONES_FILE), SystemTime::now())?;
        let instance = instance_id(root)?;
        let records = Records {
            root: root.to_owned(),
            _lock: lock,
            tombstones: Mutex::new(tombstones),
            instance,
        };
        for leftovers in [STAGING, FORGOTTEN] {
            let dir = root.join(leftovers);
            match std::fs::remove_dir_all(&dir) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    return Err(error.into());
                }
                _ => {}
            }
            std::fs::create_dir_all(&dir)?;
        }
        std::fs::create_dir_all(root.join(PROCESSES))?;
        Ok(records)
    }

    /// The directory of process `id` (recorded or not).
    pub(crate) fn dir(&self, id: &str) -> PathBuf {
        self.root.join(PROCESSES).join(id)
    }

    /// The worker's instance id: 16 random hexadecimal digits, made the first
    /// time the state directory is used, then kept.
    pub(crate) fn instance(&self) -> &str {
        &self.instance
    }

    /// Whether `id` was forgotten (within [`TOMBSTONES_KEPT`]): it is never
    /// started again.
    pub(crate) fn is_forgotten(&self, id: &str) -> bool {
        self.tombstones
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(id)
    }

    /// Whether `id` is recorded.
    pub(crate) fn is_recorded(&self, id: &str) -> bool {
        self.dir(id).is_dir()
    }

    /// The ids of every recorded process, sorted. A name that is not a process id
    /// (something else put there) is left alone.
    pub(crate) fn ids(&self) -> std::io::Result<Vec<String>> {
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(self.root.join(PROCESSES))? {
            let entry = entry?;
            match entry.file_name().into_string() {
                Ok(id) if api::valid_process_id(&id) && entry.file_type()?.is_dir() => {
                    ids.push(id);
                }
                _ => tracing::debug!(name = ?entry.file_name(), "not a process record"),
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Records `assignment` durably: when this returns, a worker restarted after
    /// a crash, even of the machine, knows the process. The caller has checked the
    /// id ([`api::valid_process_id`]).
    pub(crate) fn record(&self, assignment: &Assignment) -> std::io::Result<()> {
        let staged = self.root.join(STAGING).join(&assignment.id);
        if staged.exists() {
            std::fs::remove_dir_all(&staged)?;
        }
        std::fs::create_dir(&staged)?;
        let mut spec = serde_json::to_vec_pretty(&assignment.spec)?;
        spec.push(b'\n');
        let mut file = std::fs::File::create(staged.join(SPEC_FILE))?;
        file.write_all(&spec)?;
        file.sync_all()?;
        sync_dir(&staged)?;
        let processes = self.root.join(PROCESSES);
        std::fs::rename(&staged, processes.join(&assignment.id))?;
        sync_dir(&processes)?;
        sync_dir(&self.root.join(STAGING))
    }

    /// Writes `id`'s tombstone again, dated now: a forgotten id that the master
    /// still offers stays forgotten for as long as it is offered (and
    /// [`TOMBSTONES_KEPT`] after).
    pub(crate) fn refresh_tombstone(&self, id: &str) -> std::io::Result<()> {
        let mut tombstones = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join(TOMBSTONES_FILE))?;
        tombstones.write_all(format!("{id} {}\n", jiff::Timestamp::now()).as_bytes())?;
        tombstones.sync_data()
    }

    /// Forgets `id`: its tombstone is written (and synced) first, so that the
    /// id never starts again; then its record is gone at once, whole (a
    /// rename), and removed.
    pub(crate) fn forget(&self, id: &str) -> std::io::Result<()> {
        let mut tombstones = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join(TOMBSTONES_FILE))?;
        tombstones.write_all(format!("{id} {}\n", jiff::Timestamp::now()).as_bytes())?;
        tombstones.sync_data()?;
        self.tombstones
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.to_owned());
        let gone = self.root.join(FORGOTTEN).join(id);
        if gone.exists() {
            std::fs::remove_dir_all(&gone)?;
        }
        std::fs::rename(self.dir(id), &gone)?;
        sync_dir(&self.root.join(PROCESSES))?;
        std::fs::remove_dir_all(&gone)
    }
}

/// One recorded process, read from its directory.
#[derive(Debug)]
pub(crate) struct Record {
    dir: PathBuf,
    /// The complete lines of its state file, in order, without their newline.
    pub(crate) lines: Vec<String>,
    /// Whether the file ends in the middle of a line (a write cut by a crash).
    torn: bool,
}

impl Record {
    /// Reads the record in `dir`.
    pub(crate) fn read(dir: PathBuf) -> std::io::Result<Record> {
        let text = match std::fs::read(dir.join(STATE_FILE)) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => return Err(error),
        };
        let torn = text.last().is_some_and(|&last| last != b'\n');
        let lines = match text.iter().rposition(|&byte| byte == b'\n') {
            Some(end) => text[..end]
                .split(|&byte| byte == b'\n')
                .map(|line| String::from_utf8_lossy(line).into_owned())
                .collect(),
            None => Vec::new(),
        };
        Ok(Record { dir, lines, torn })
    }

    /// The states its lines say, in order; a line that is not a state is left
    /// out.
    pub(crate) fn states(&self) -> Vec<State> {
        self.lines
            .iter()
            .filter_map(|line| serde_json::from_str::<StateChange>(line).ok())
            .map(|change| change.state)
            .collect()
    }

    /// Whether it reached `success` or `failed`.
    pub(crate) fn ended(&self) -> bool {
        self.states()
            .iter()
            .any(|state| matches!(state, State::Success | State::Failed { .. }))
    }

    /// The index in [`lines`](Record::lines) of its last state (`success` or
    /// `failed`), once it ended.
    pub(crate) fn last_state_line(&self) -> Option<usize> {
        self.lines.iter().position(|line| {
            serde_json::from_str::<StateChange>(line)
                .is_ok_and(|change| matches!(change.state, State::Success | State::Failed { .. }))
        })
    }

    /// Its command, once it ran: the pid (also its process group's) and when
    /// its `running` state says it started.
    pub(crate) fn command(&self) -> Option<(u32, jiff::Timestamp)> {
        self.lines
            .iter()
            .rev()
            .filter_map(|line| serde_json::from_str::<StateChange>(line).ok())
            .filter_map(|change| match change.state {
                State::Running { pid } => Some((pid, change.at)),
                _ => None,
            })
            .next()
    }

    /// Whether its last state is `failed`.
    pub(crate) fn failed(&self) -> bool {
        matches!(self.states().last(), Some(State::Failed { .. }))
    }

    /// The run directory its `init` state names.
    pub(crate) fn run_dir(&self) -> Option<PathBuf> {
        self.states().into_iter().find_map(|state| match state {
            State::Init { dir } => Some(dir),
            _ => None,
        })
    }

    /// The log of its run: the copy its runner kept in the record, else (a
    /// runner that kept none: it died, or is older) the log in a failed run's
    /// directory, which a failure keeps.
    pub(crate) fn log(&self) -> Option<PathBuf> {
        let copy = self.dir.join(LOG_COPY);
        if copy.exists() {
            return Some(copy);
        }
        if self.failed() {
            return self.run_dir().map(|dir| dir.join(crate::runner::LOG_FILE));
        }
        None
    }

    /// The pid its runner wrote, when it did.
    pub(crate) fn runner_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join(PID_FILE))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// When it was recorded.
    pub(crate) fn recorded_at(&self) -> Option<SystemTime> {
        std::fs::metadata(self.dir.join(SPEC_FILE))
            .and_then(|metadata| metadata.modified())
            .ok()
    }

    /// How many of its lines the master acknowledged (0 when none, or when the
    /// count is unreadable: resending is harmless).
    pub(crate) fn delivered(&self) -> usize {
        std::fs::read_to_string(self.dir.join(DELIVERED_FILE))
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Keeps that the master acknowledged `count` lines. Written whole and
    /// renamed; not synced: a count lost in a crash only resends lines the master
    /// ignores.
    pub(crate) fn set_delivered(&self, count: usize) -> std::io::Result<()> {
        let partial = self.dir.join(format!("{DELIVERED_FILE}.partial"));
        std::fs::write(&partial, format!("{count}\n"))?;
        std::fs::rename(&partial, self.dir.join(DELIVERED_FILE))
    }

    /// Whether the master acknowledged the log.
    pub(crate) fn log_delivered(&self) -> bool {
        self.dir.join(LOG_DELIVERED_FILE).exists()
    }

    /// Keeps that the master acknowledged the log (not synced: a mark lost in a
    /// crash only puts the log again).
    pub(crate) fn set_log_delivered(&self) -> std::io::Result<()> {
        std::fs::write(self.dir.join(LOG_DELIVERED_FILE), b"")
    }

    /// Appends `state` (the worker's own word on a run whose runner cannot give
    /// it any more), as the runner would have, then reads the record again.
    pub(crate) async fn append(self, state: State) -> std::io::Result<Record> {
        let path = self.dir.join(STATE_FILE);
        if self.torn {
            // The cut line stays unparsable on its own line; the new one is whole.
            std::fs::OpenOptions::new()
                .append(true)
                .open(&path)?
                .write_all(b"\n")?;
        }
        FileStateSink::new(&path)
            .record(&StateChange::now(state))
            .await
            .map_err(std::io::Error::other)?;
        Record::read(self.dir)
    }
}

/// The ids in the tombstones file at `path` forgotten less than
/// [`TOMBSTONES_KEPT`] before `now`; the file is rewritten without the others
/// (and without lines that are not tombstones: a write cut by a crash).
fn prune_tombstones(path: &Path, now: SystemTime) -> std::io::Result<HashSet<String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(error) => return Err(error),
    };
    let oldest = now
        .checked_sub(TOMBSTONES_KEPT)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut kept = String::new();
    let mut ids = HashSet::new();
    for line in text.lines() {
        let tombstone = line.split_once(' ').and_then(|(id, at)| {
            let at = SystemTime::from(at.parse::<jiff::Timestamp>().ok()?);
            api::valid_process_id(id).then_some((id, at))
        });
        match tombstone {
            Some((id, at)) if at >= oldest => {
                kept.push_str(line);
                kept.push('\n');
                ids.insert(id.to_owned());
            }
            Some(_) => {}
            None => tracing::warn!(%line, path = %path.display(), "not a tombstone: dropped"),
        }
    }
    if kept != text {
        write_synced(path, kept.as_bytes())?;
    }
    Ok(ids)
}

/// The instance id kept in `root`, made (16 random hexadecimal digits) when
/// there is none.
fn instance_id(root: &Path) -> std::io::Result<String> {
    let path = root.join(INSTANCE_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if valid_instance(text.trim()) => return Ok(text.trim().to_owned()),
        Ok(text) => tracing::warn!(path = %path.display(), %text, "not an instance id: made anew"),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let mut random = [0u8; 8];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut random)?;
    let instance: String = random.iter().map(|byte| format!("{byte:02x}")).collect();
    write_synced(&path, format!("{instance}\n").as_bytes())?;
    Ok(instance)
}

/// Whether `text` is an instance id as [`instance_id`] makes them (or one set
/// by hand: letters, digits, `-` and `_`, up to 64).
fn valid_instance(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

/// Writes `path` whole: a synced `.partial` file renamed into place.
fn write_synced(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let mut file = std::fs::File::create(&partial)?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&partial, path)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Syncs a directory, so that the names just made or renamed in it survive a
/// crash.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn assignment(id: &str) -> Assignment {
        Assignment {
            id: id.to_owned(),
            spec: json!({"cmd": ["true"]}),
        }
    }

    #[test]
    fn a_record_survives_reopening_and_is_gone_once_forgotten() {
        let root = tempfile::tempdir().unwrap();
        let records = Records::open(root.path()).unwrap();
        records.record(&assignment("b-2")).unwrap();
        records.record(&assignment("a-1")).unwrap();
        let spec = std::fs::read_to_string(records.dir("a-1").join(SPEC_FILE)).unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&spec).unwrap(),
            json!({"cmd": ["true"]})
        );
        drop(records);

        let records = Records::open(root.path()).unwrap();
        assert_eq!(records.ids().unwrap(), ["a-1", "b-2"]);
        records.forget("a-1").unwrap();
        assert!(!records.is_recorded("a-1"));
        assert_eq!(records.ids().unwrap(), ["b-2"]);
    }

    #[test]
    fn a_forgotten_id_stays_forgotten_for_a_week_across_restarts() {
        let root = tempfile::tempdir().unwrap();
        let records = Records::open(root.path()).unwrap();
        records.record(&assignment("done-1")).unwrap();
        assert!(!records.is_forgotten("done-1"));
        records.forget("done-1").unwrap();
        assert!(records.is_forgotten("done-1"));
        assert!(!records.is_forgotten("other-1"));
        drop(records);

        let tombstones = root.path().join(TOMBSTONES_FILE);
        let eight_days_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(8 * 24);
        let mut text = std::fs::read_to_string(&tombstones).unwrap();
        text.push_str(&format!("old-1 {eight_days_ago}\ncut-"));
        std::fs::write(&tombstones, text).unwrap();
        let records = Records::open(root.path()).unwrap();
        assert!(records.is_forgotten("done-1"));
        assert!(!records.is_forgotten("old-1"), "older than a week: pruned");
        let text = std::fs::read_to_string(&tombstones).unwrap();
        assert!(
            text.starts_with("done-1 ") && text.ends_with('\n'),
            "{text:?}"
        );
        assert_eq!(text.lines().count(), 1, "{text:?}");
    }

    #[test]
    fn a_tombstone_dated_again_outlives_the_week_after_its_run() {
        let root = tempfile::tempdir().unwrap();
        let records = Records::open(root.path()).unwrap();
        let tombstones = root.path().join(TOMBSTONES_FILE);
        let eight_days_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(8 * 24);
        std::fs::write(&tombstones, format!("ran-1 {eight_days_ago}\n")).unwrap();
        // Offered again by the master: dated again.
        records.refresh_tombstone("ran-1").unwrap();
        drop(records);
        assert!(Records::open(root.path()).unwrap().is_forgotten("ran-1"));
    }

    #[test]
    fn the_instance_id_is_made_once_and_kept() {
        let root = tempfile::tempdir().unwrap();
        let first = Records::open(root.path()).unwrap().instance().to_owned();
        assert_eq!(first.len(), 16);
        assert!(first.chars().all(|c| c.is_ascii_hexdigit()), "{first}");
        assert_eq!(Records::open(root.path()).unwrap().instance(), first);
        let elsewhere = tempfile::tempdir().unwrap();
        assert_ne!(Records::open(elsewhere.path()).unwrap().instance(), first);
    }

    #[test]
    fn a_state_directory_is_used_by_one_worker_at_a_time() {
        let root = tempfile::tempdir().unwrap();
        let first = Records::open(root.path()).unwrap();
        assert!(matches!(
            Records::open(root.path()),
            Err(OpenError::Locked(_))
        ));
        drop(first);
        Records::open(root.path()).unwrap();
    }

    #[test]
    fn a_half_made_record_is_not_a_record() {
        let root = tempfile::tempdir().unwrap();
        drop(Records::open(root.path()).unwrap());
        std::fs::create_dir(root.path().join(STAGING).join("x-1")).unwrap();
        std::fs::create_dir(root.path().join(PROCESSES).join("..bad name")).unwrap();
        let records = Records::open(root.path()).unwrap();
        assert!(records.ids().unwrap().is_empty());
        assert!(!root.path().join(STAGING).join("x-1").exists());
    }

    #[tokio::test]
    async fn only_whole_lines_are_states_and_an_append_after_a_torn_one_is_whole() {
        let root = tempfile::tempdir().unwrap();
        let records = Records::open(root.path()).unwrap();
        records.record(&assignment("p")).unwrap();
        let dir = records.dir("p");
        let init = serde_json::to_string(&StateChange::now(State::Init {
            dir: "/tmp/run".into(),
        }))
        .unwrap();
        std::fs::write(dir.join(STATE_FILE), format!("{init}\n{{\"at\":")).unwrap();

        let record = Record::read(dir.clone()).unwrap();
        assert_eq!(record.lines, [init]);
        assert!(!record.ended());
        assert_eq!(record.run_dir(), Some(PathBuf::from("/tmp/run")));

        let record = record
            .append(State::Failed {
                exit_code: None,
                signal: None,
                reason: "the runner died".to_owned(),
            })
            .await
            .unwrap();
        assert_eq!(record.lines.len(), 3);
        assert_eq!(record.lines[1], "{\"at\":");
        assert!(record.ended() && record.failed());

        assert_eq!(record.delivered(), 0);
        record.set_delivered(2).unwrap();
        assert_eq!(Record::read(dir).unwrap().delivered(), 2);
    }
}
