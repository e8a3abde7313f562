//! Mail storms: repeats of one failure are counted, and mailed at the 1st, 2nd, 4th,
//! 8th ... occurrence of a streak.
//!
//! A streak is a run of failures of one group with no gap as long as the window
//! (1 h by default): the window slides, and ends `window` after the group's last
//! failure. A crash loop is one long streak, so it keeps doubling: a job that fails
//! every minute for a day sends 11 mails (1, 2, 4, ..., 1024), each saying how many
//! failures it stands for. A group that has been quiet for a whole window starts a
//! new streak at 1, and its first mail also reports what the last one left unsaid.
//!
//! Failures are grouped by a fingerprint: their kind, the keys that tell their
//! sources apart (a program, the wrapper's `--context` values), compared as they
//! are, and their text without the numbers, ids and paths that vary from one
//! occurrence to the next.
//!
//! The state lives in memory, or in a file that separate processes on one host
//! share (a cron job run by the command wrapper is a new process each time). The
//! file is made with mode 0600, never through a symbolic link, and locked while it
//! is read and rewritten; a lock that stays taken is waited for a bounded time,
//! never while a mail is being sent. A file that cannot be used does not stop a
//! mail: the count falls back to memory, and the mail says that throttling is off.
//! Counts are claimed when the decision to send is made, so that two processes
//! never report the same occurrences; a mail that fails to go out gives its count
//! back to the next one.

use std::collections::BTreeMap;
use std::fs::{DirBuilder, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Groups quiet for this long after their window are forgotten, reported or not.
const FORGET_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

/// How often a taken lock on the state file is tried again.
const LOCK_RETRY: Duration = Duration::from_millis(20);

/// The grouping key of a failure: its `kind`, its `keys` as they are, and its
/// `text` without what varies.
pub(crate) fn fingerprint(kind: &str, keys: &[String], text: &str) -> String {
    let mut hasher = Sha256::new();
    for part in std::iter::once(kind)
        .chain(keys.iter().map(String::as_str))
        .chain(std::iter::once(normalize(text).as_str()))
    {
        // Length-prefixed, so that no two lists of parts hash alike.
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hex::encode(&hasher.finalize()[..8])
}

/// The text without what varies between occurrences of one failure: words with
/// a `/` become `<path>`, hexadecimal ids `<id>`, other digit runs `#`.
fn normalize(summary: &str) -> String {
    summary
        .split_whitespace()
        .map(|word| {
            if word.contains('/') {
                return "<path>".to_owned();
            }
            let mut out = String::new();
            let mut run = String::new();
            for c in word.chars().chain(std::iter::once(' ')) {
                if c.is_ascii_alphanumeric() {
                    run.push(c);
                    continue;
                }
                out.push_str(&normalize_run(&run));
                run.clear();
                if c != ' ' {
                    out.push(c);
                }
            }
            out
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn normalize_run(run: &str) -> String {
    let hex = run.strip_prefix("0x").unwrap_or(run);
    let has_digit = hex.chars().any(|c| c.is_ascii_digit());
    let all_hex = !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit());
    let all_digits = hex.chars().all(|c| c.is_ascii_digit());
    if all_hex && !all_digits && (has_digit || hex.len() >= 8) {
        return "<id>".to_owned();
    }
    let mut out = String::new();
    let mut in_digits = false;
    for c in run.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

/// What to do with one occurrence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Mail it; the ticket says what the mail stands for.
    Send(Ticket),
    /// Counted, not mailed.
    Hold {
        /// Occurrences in this streak so far.
        count: u64,
        /// The occurrence that will be mailed next, unless the streak ends first.
        next_mail_at: u64,
    },
}

/// A decision to send, with what the mail stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ticket {
    pub(crate) fingerprint: String,
    /// Failures this mail reports: this one and those not mailed before it,
    /// including any left over from an earlier streak or a mail that failed.
    pub(crate) stands_for: u64,
    /// Occurrences in this streak so far, this one included.
    pub(crate) count: u64,
    /// Unix time of the streak's first failure.
    pub(crate) first: u64,
    /// Unix time of this failure.
    pub(crate) at: u64,
    /// The window, when throttling is on.
    pub(crate) window: Option<Duration>,
    /// Why the shared state could not be used, when it could not: repeats are then
    /// counted in this process only.
    pub(crate) shared_state_lost: Option<String>,
}

impl Ticket {
    /// A mail for this failure alone, with throttling off.
    fn unthrottled(fingerprint: &str, now: u64) -> Ticket {
        Ticket {
            fingerprint: fingerprint.to_owned(),
            stands_for: 1,
            count: 1,
            first: now,
            at: now,
            window: None,
            shared_state_lost: None,
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    groups: BTreeMap<String, Group>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Group {
    /// Unix time of the streak's first failure.
    first: u64,
    /// Unix time of its last failure: the window ends `window` after it.
    last: u64,
    /// Occurrences in the streak.
    count: u64,
    /// Occurrences already claimed by a mail.
    claimed: u64,
    /// Occurrences to add to the next mail: left from an earlier streak, or given
    /// back by a mail that failed.
    carried: u64,
}

impl Group {
    fn unreported(&self) -> u64 {
        // Saturating: the state file is outside input, and may have been edited.
        self.count
            .saturating_sub(self.claimed)
            .saturating_add(self.carried)
    }

    fn streak_over(&self, now: u64, window: u64) -> bool {
        // A last failure far in the future (the clock was set back, the file
        // edited) would hold the streak open forever: it is over too. A second or
        // two in the future is another process whose clock read came first.
        now >= self.last.saturating_add(window) || self.last > now.saturating_add(window)
    }
}

impl State {
    fn record(&mut self, fingerprint: &str, now: u64, window: u64) -> Decision {
        let group = self.groups.entry(fingerprint.to_owned()).or_insert(Group {
            first: now,
            last: now,
            count: 0,
            claimed: 0,
            carried: 0,
        });
        if group.streak_over(now, window) {
            *group = Group {
                first: now,
                last: now,
                count: 0,
                claimed: 0,
                carried: group.unreported(),
            };
        }
        group.last = group.last.max(now);
        group.count = group.count.saturating_add(1);
        if group.count.is_power_of_two() {
            let stands_for = group.unreported();
            group.claimed = group.count;
            group.carried = 0;
            Decision::Send(Ticket {
                fingerprint: fingerprint.to_owned(),
                stands_for,
                count: group.count,
                first: group.first,
                at: now,
                window: Some(Duration::from_secs(window)),
                shared_state_lost: None,
            })
        } else {
            Decision::Hold {
                count: group.count,
                next_mail_at: group.count.checked_next_power_of_two().unwrap_or(u64::MAX),
            }
        }
    }

    fn give_back(&mut self, ticket: &Ticket) {
        if let Some(group) = self.groups.get_mut(&ticket.fingerprint) {
            group.carried = group.carried.saturating_add(ticket.stands_for);
        }
    }

    fn forget_old(&mut self, now: u64, window: u64) {
        let forget = FORGET_AFTER.as_secs();
        self.groups.retain(|_, group| {
            let end = group.last.saturating_add(window);
            now < end || (group.unreported() > 0 && now < end.saturating_add(forget))
        });
    }
}

/// The throttle of one [`ErrorEmail`](crate::ErrorEmail).
#[derive(Debug)]
pub(crate) struct Throttle {
    /// The window in whole seconds (at least one); `None` turns throttling off.
    window: Option<u64>,
    file: Option<PathBuf>,
    /// The state without a file, and the fallback when the file cannot be used.
    memory: Mutex<State>,
    /// How long a taken lock on the file is waited for.
    lock_wait: Duration,
}

impl Throttle {
    pub(crate) fn new(window: Duration, file: Option<&Path>, lock_wait: Duration) -> Throttle {
        Throttle {
            // A window under a second still groups the failures of that second.
            window: (!window.is_zero()).then(|| window.as_secs().max(1)),
            file: file.map(Path::to_owned),
            memory: Mutex::default(),
            lock_wait,
        }
    }

    /// Counts one occurrence and says whether to mail it.
    pub(crate) async fn record(&self, fingerprint: &str) -> Decision {
        let Some(window) = self.window else {
            return Decision::Send(Ticket::unthrottled(fingerprint, unix_now()));
        };
        let (decision, lost) = self
            .change(|state, now| state.record(fingerprint, now, window))
            .await;
        match decision {
            Decision::Send(ticket) => Decision::Send(Ticket {
                shared_state_lost: lost,
                ..ticket
            }),
            hold => hold,
        }
    }

    /// Returns the count of a mail that was not delivered, for the next mail.
    pub(crate) async fn give_back(&self, ticket: &Ticket) {
        if self.window.is_some() {
            self.change(|state, _| state.give_back(ticket)).await;
        }
    }

    /// Applies `change` to the shared state, or, when the file cannot be used, to
    /// this process's state and says why.
    async fn change<R>(&self, change: impl Fn(&mut State, u64) -> R) -> (R, Option<String>) {
        let window = self.window.unwrap_or(1);
        let lost = match &self.file {
            None => None,
            Some(path) => match self.change_file(path, window, &change).await {
                Ok(result) => return (result, None),
                Err(err) => {
                    let reason = format!("cannot use the throttle file {}: {err}", path.display());
                    tracing::warn!(
                        "erroremail: {reason}; repeats are counted in this process only"
                    );
                    Some(reason)
                }
            },
        };
        let mut state = self
            .memory
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = unix_now();
        let result = change(&mut state, now);
        state.forget_old(now, window);
        (result, lost)
    }

    async fn change_file<R>(
        &self,
        path: &Path,
        window: u64,
        change: &impl Fn(&mut State, u64) -> R,
    ) -> io::Result<R> {
        let mut file = open_locked(path, self.lock_wait).await?;
        // The clock is read under the lock, so that processes record in order.
        let now = unix_now();
        let mut state = read_state(&mut file, path)?;
        let result = change(&mut state, now);
        state.forget_old(now, window);
        write_state(&mut file, &state)?;
        Ok(result)
        // The lock is released when `file` is closed.
    }
}

/// Opens the state file (made 0600, in a directory made 0700, never through a
/// symbolic link) and locks it, waiting at most `wait` for another process.
async fn open_locked(path: &Path, wait: Duration) -> io::Result<File> {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|err| {
            if err.raw_os_error() == Some(libc::ELOOP) {
                io::Error::other("it is a symbolic link, which is not followed")
            } else {
                err
            }
        })?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("it is not a regular file"));
    }
    let deadline = Instant::now() + wait;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(TryLockError::Error(err)) => return Err(err),
            Err(TryLockError::WouldBlock) if Instant::now() >= deadline => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "another process held its lock for more than {}",
                        crate::text::duration(wait)
                    ),
                ));
            }
            Err(TryLockError::WouldBlock) => tokio::time::sleep(LOCK_RETRY).await,
        }
    }
}

fn read_state(file: &mut File, path: &Path) -> io::Result<State> {
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    if text.trim().is_empty() {
        return Ok(State::default());
    }
    Ok(serde_json::from_str(&text).unwrap_or_else(|err| {
        tracing::warn!(path = %path.display(), %err, "erroremail: unreadable throttle state; starting afresh");
        State::default()
    }))
}

fn write_state(file: &mut File, state: &State) -> io::Result<()> {
    let text = serde_json::to_string(state).map_err(io::Error::other)?;
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(text.as_bytes())?;
    file.flush()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3600;
    const WAIT: Duration = Duration::from_millis(300);

    fn sent(decision: Decision) -> Option<u64> {
        match decision {
            Decision::Send(ticket) => Some(ticket.stands_for),
            Decision::Hold { .. } => None,
        }
    }

    fn ticket(decision: Decision) -> Ticket {
        match decision {
            Decision::Send(ticket) => ticket,
            hold => panic!("expected a mail, got {hold:?}"),
        }
    }

    #[test]
    fn numbers_ids_and_paths_do_not_split_a_group() {
        let text = |t: &str| fingerprint("error", &[], t);
        let a = text("worker 17 crashed reading /tmp/job-17/in.json (id 3fa85f64, 0x1f)");
        let b = text("worker 4242 crashed reading /var/jobs/9/in.json (id deadbeef, 0x2a)");
        assert_eq!(a, b);
        assert_ne!(a, text("worker 17 finished reading"));
        assert_ne!(
            a,
            fingerprint("panic", &[], "worker 17 crashed reading /x (id 1, 0x1)")
        );
    }

    #[test]
    fn keys_split_groups_whatever_the_text() {
        let backup = fingerprint("process", &["/x/backup-db.sh".to_owned()], "exit 1");
        let rotate = fingerprint("process", &["/x/rotate-logs.sh".to_owned()], "exit 1");
        assert_ne!(backup, rotate);
        let job = |value: &str| fingerprint("process", &[format!("job={value}")], "exit 1");
        assert_ne!(job("a"), job("b"));
        assert_ne!(
            fingerprint("process", &["a".to_owned(), "b".to_owned()], ""),
            fingerprint("process", &["ab".to_owned()], "")
        );
    }

    #[test]
    fn normalization_keeps_words() {
        assert_eq!(
            normalize("job17 failed: exit status 3 after 2026-03-01T03:00"),
            "job# failed: exit status # after #-#-#T#:#"
        );
    }

    #[test]
    fn hundred_repeats_send_seven_mails_that_add_up_to_sixty_four() {
        let mut state = State::default();
        let mails: Vec<u64> = (0..100)
            .filter_map(|i| sent(state.record("f", 1000 + i, HOUR)))
            .collect();
        assert_eq!(mails, [1, 1, 2, 4, 8, 16, 32]);
    }

    #[test]
    fn a_crash_loop_keeps_doubling_across_hours() {
        // One failure a minute for a day: 1440 failures, one streak.
        let mut state = State::default();
        let mails: Vec<u64> = (0..1440)
            .filter_map(|minute| sent(state.record("f", 1000 + minute * 60, HOUR)))
            .collect();
        assert_eq!(mails.len(), 11, "{mails:?}");
        assert_eq!(mails.last(), Some(&512));
    }

    #[test]
    fn a_quiet_window_starts_a_new_streak_that_reports_the_rest() {
        let mut state = State::default();
        for i in 0..100 {
            state.record("f", 1000 + i, HOUR);
        }
        // Failures keep coming within the window of the last one: still held.
        assert_eq!(sent(state.record("f", 1099 + HOUR - 1, HOUR)), None);
        // A whole window without one: counting starts again, and the first mail
        // carries the 37 failures after the 64th that were counted and not mailed.
        let quiet = 1099 + 2 * HOUR;
        let first = ticket(state.record("f", quiet, HOUR));
        assert_eq!((first.count, first.stands_for), (1, 38));
        assert_eq!(first.first, quiet);
        assert_eq!(sent(state.record("f", quiet + 1, HOUR)), Some(1));
    }

    #[test]
    fn a_mail_that_failed_gives_its_count_to_the_next() {
        let mut state = State::default();
        let first = ticket(state.record("f", 1000, HOUR));
        state.give_back(&first);
        assert_eq!(sent(state.record("f", 1001, HOUR)), Some(2));
    }

    #[test]
    fn groups_are_independent() {
        let mut state = State::default();
        assert_eq!(sent(state.record("a", 1000, HOUR)), Some(1));
        assert_eq!(sent(state.record("b", 1000, HOUR)), Some(1));
        assert_eq!(sent(state.record("a", 1001, HOUR)), Some(1));
        assert_eq!(
            state.record("a", 1002, HOUR),
            Decision::Hold {
                count: 3,
                next_mail_at: 4
            }
        );
    }

    #[test]
    fn a_clock_a_little_behind_another_process_does_not_end_the_streak() {
        let mut state = State::default();
        state.record("f", 100_000, HOUR);
        assert_eq!(ticket(state.record("f", 99_999, HOUR)).count, 2);
        // More than a window behind: the clock was set back, the streak is over.
        assert_eq!(ticket(state.record("f", 100_000 - 2 * HOUR, HOUR)).count, 1);
    }

    #[test]
    fn reported_groups_are_forgotten_a_window_after_their_last_failure() {
        let mut state = State::default();
        state.record("a", 1000, HOUR);
        state.record("b", 1000, HOUR);
        state.record("b", 1001, HOUR);
        state.record("b", 1002, HOUR);
        state.forget_old(1001 + HOUR, HOUR);
        assert!(!state.groups.contains_key("a"), "fully reported");
        assert!(state.groups.contains_key("b"), "its window is still open");
        state.forget_old(1002 + HOUR, HOUR);
        assert!(state.groups.contains_key("b"), "one occurrence unreported");
        state.forget_old(1002 + HOUR + FORGET_AFTER.as_secs(), HOUR);
        assert!(state.groups.is_empty());
    }

    #[tokio::test]
    async fn file_state_is_shared_between_throttles_and_survives_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/throttle.json");
        let one = Throttle::new(Duration::from_secs(HOUR), Some(&path), WAIT);
        let two = Throttle::new(Duration::from_secs(HOUR), Some(&path), WAIT);
        assert!(matches!(one.record("f").await, Decision::Send(_)));
        assert!(matches!(two.record("f").await, Decision::Send(_)));
        assert!(matches!(
            one.record("f").await,
            Decision::Hold { count: 3, .. }
        ));
        std::fs::write(&path, "{not json").unwrap();
        let fresh = ticket(two.record("f").await);
        assert_eq!(fresh.shared_state_lost, None);
    }

    #[tokio::test]
    async fn state_file_is_private_to_its_owner() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new/throttle.json");
        let throttle = Throttle::new(Duration::from_secs(HOUR), Some(&path), WAIT);
        assert_eq!(ticket(throttle.record("f").await).shared_state_lost, None);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
    }

    #[tokio::test]
    async fn a_symbolic_link_is_not_followed_and_the_mail_still_goes() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("someone-elses-file");
        std::fs::write(&target, "precious").unwrap();
        let path = dir.path().join("throttle.json");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let throttle = Throttle::new(Duration::from_secs(HOUR), Some(&path), WAIT);

        let sent = ticket(throttle.record("f").await);

        let lost = sent.shared_state_lost.unwrap();
        assert!(lost.contains("symbolic link"), "{lost}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
        // Repeats are still counted, in this process.
        assert!(matches!(throttle.record("f").await, Decision::Send(_)));
        assert!(matches!(throttle.record("f").await, Decision::Hold { .. }));
    }

    #[tokio::test]
    async fn a_lock_held_elsewhere_is_waited_for_a_bounded_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("throttle.json");
        let holder = File::create(&path).unwrap();
        holder.lock().unwrap();
        let throttle = Throttle::new(Duration::from_secs(HOUR), Some(&path), WAIT);

        let started = Instant::now();
        let sent = ticket(throttle.record("f").await);

        assert!(started.elapsed() >= WAIT);
        assert!(started.elapsed() < WAIT * 10, "{:?}", started.elapsed());
        let lost = sent.shared_state_lost.unwrap();
        assert!(lost.contains("held its lock"), "{lost}");
    }

    #[tokio::test]
    async fn an_edited_state_file_with_impossible_counts_does_not_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("throttle.json");
        let key = fingerprint("error", &[], "x");
        let now = unix_now();
        let max = u64::MAX;
        std::fs::write(
            &path,
            format!(
                r#"{{"groups":{{"{key}":{{"first":0,"last":{now},"count":{max},"claimed":{max},"carried":{max}}}}}}}"#
            ),
        )
        .unwrap();
        let throttle = Throttle::new(Duration::from_secs(HOUR), Some(&path), WAIT);
        throttle.record(&key).await;
        let far_future = format!(
            r#"{{"groups":{{"{key}":{{"first":{max},"last":{max},"count":3,"claimed":9,"carried":0}}}}}}"#
        );
        std::fs::write(&path, far_future).unwrap();
        assert_eq!(ticket(throttle.record(&key).await).count, 1);
    }

    #[tokio::test]
    async fn zero_window_sends_everything() {
        let throttle = Throttle::new(Duration::ZERO, None, WAIT);
        for _ in 0..5 {
            assert_eq!(sent(throttle.record("f").await), Some(1));
        }
    }
}
