//! Mail storms: repeats of one failure are counted, and mailed at the 1st, 2nd, 4th,
//! 8th ... occurrence within a window.
//!
//! A crash loop that fails 100 times an hour sends 7 mails (1, 2, 4, ..., 64), each
//! saying how many failures it stands for; the occurrences after the last mail of a
//! window are reported by the first mail of the next one. Failures are grouped by a
//! fingerprint: their kind and their summary without the numbers, ids and paths that
//! vary from one occurrence to the next.
//!
//! The state lives in memory, or in a file that separate processes on one host
//! share (a cron job run by the command wrapper is a new process each time). The
//! file is locked while it is read and rewritten, and is never locked while a mail
//! is being sent. Counts are claimed when the decision to send is made, so that two
//! processes never report the same occurrences; a mail that fails to go out gives
//! its count back to the next one.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Groups whose window ended this long ago are forgotten, reported or not.
const FORGET_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

/// The grouping key of a failure.
pub(crate) fn fingerprint(kind: &str, summary: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(kind.as_bytes());
    hasher.update(b"\n");
    hasher.update(normalize(summary).as_bytes());
    hex::encode(&hasher.finalize()[..8])
}

/// The summary without what varies between occurrences of one failure: words with
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
        /// Occurrences in this window so far.
        count: u64,
        /// The occurrence that will be mailed next, unless the window ends first.
        next_mail_at: u64,
    },
}

/// A decision to send, with what the mail stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ticket {
    pub(crate) fingerprint: String,
    /// Failures this mail reports: those since the last mail, including any left
    /// over from the previous window or from a mail that was not delivered.
    pub(crate) stands_for: u64,
    /// Occurrences in this window so far, this one included.
    pub(crate) count: u64,
    /// Unix time the window began; zero when throttling is off.
    pub(crate) window_start: u64,
    /// Unix time the window ends.
    pub(crate) window_end: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    groups: BTreeMap<String, Group>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Group {
    /// Unix time the window began.
    start: u64,
    /// Occurrences in the window.
    count: u64,
    /// Occurrences already claimed by a mail.
    claimed: u64,
    /// Occurrences to add to the next mail: left from an earlier window, or given
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
}

impl State {
    fn record(&mut self, fingerprint: &str, now: u64, window: u64) -> Decision {
        let group = self.groups.entry(fingerprint.to_owned()).or_insert(Group {
            start: now,
            count: 0,
            claimed: 0,
            carried: 0,
        });
        // A window that starts in the future (the clock was set back, or the file
        // edited) would never end: it is over too.
        if now >= group.start.saturating_add(window) || group.start > now {
            *group = Group {
                start: now,
                count: 0,
                claimed: 0,
                carried: group.unreported(),
            };
        }
        group.count = group.count.saturating_add(1);
        if group.count.is_power_of_two() {
            let stands_for = group.unreported();
            group.claimed = group.count;
            group.carried = 0;
            Decision::Send(Ticket {
                fingerprint: fingerprint.to_owned(),
                stands_for,
                count: group.count,
                window_start: group.start,
                window_end: group.start.saturating_add(window),
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
            let end = group.start.saturating_add(window);
            now < end || (group.unreported() > 0 && now < end.saturating_add(forget))
        });
    }
}

/// The throttle of one [`ErrorEmail`](crate::ErrorEmail).
#[derive(Debug)]
pub(crate) struct Throttle {
    window: Duration,
    store: Store,
}

#[derive(Debug)]
enum Store {
    Memory(Mutex<State>),
    File(PathBuf),
}

impl Throttle {
    pub(crate) fn new(window: Duration, file: Option<&Path>) -> Throttle {
        let store = match file {
            Some(path) => Store::File(path.to_owned()),
            None => Store::Memory(Mutex::default()),
        };
        Throttle { window, store }
    }

    /// Counts one occurrence and says whether to mail it.
    pub(crate) fn record(&self, fingerprint: &str) -> io::Result<Decision> {
        let window = self.window.as_secs();
        if self.window.is_zero() {
            return Ok(Decision::Send(Ticket {
                fingerprint: fingerprint.to_owned(),
                stands_for: 1,
                count: 1,
                window_start: 0,
                window_end: 0,
            }));
        }
        let now = unix_now();
        // A window under a second still groups the failures of that second.
        let window = window.max(1);
        self.with_state(now, |state| state.record(fingerprint, now, window))
    }

    /// Returns the count of a mail that was not delivered, for the next mail.
    pub(crate) fn give_back(&self, ticket: &Ticket) -> io::Result<()> {
        if self.window.is_zero() {
            return Ok(());
        }
        self.with_state(unix_now(), |state| state.give_back(ticket))
    }

    fn with_state<R>(&self, now: u64, change: impl FnOnce(&mut State) -> R) -> io::Result<R> {
        let window = self.window.as_secs().max(1);
        match &self.store {
            Store::Memory(state) => {
                let mut state = state
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                let result = change(&mut state);
                state.forget_old(now, window);
                Ok(result)
            }
            Store::File(path) => {
                let mut file = open_locked(path)?;
                let mut state = read_state(&mut file, path)?;
                let result = change(&mut state);
                state.forget_old(now, window);
                write_state(&mut file, &state)?;
                Ok(result)
                // The lock is released when `file` is closed.
            }
        }
    }
}

fn open_locked(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    file.lock()?;
    Ok(file)
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

    fn sent(decision: Decision) -> Option<u64> {
        match decision {
            Decision::Send(ticket) => Some(ticket.stands_for),
            Decision::Hold { .. } => None,
        }
    }

    #[test]
    fn numbers_ids_and_paths_do_not_split_a_group() {
        let a = fingerprint(
            "error",
            "worker 17 crashed reading /tmp/job-17/in.json (id 3fa85f64, 0x1f)",
        );
        let b = fingerprint(
            "error",
            "worker 4242 crashed reading /var/jobs/9/in.json (id deadbeef, 0x2a)",
        );
        assert_eq!(a, b);
        assert_ne!(a, fingerprint("error", "worker 17 finished reading"));
        assert_ne!(
            a,
            fingerprint("panic", "worker 17 crashed reading /x (id 1, 0x1)")
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
    fn first_mail_of_a_new_window_carries_the_unreported_rest() {
        let mut state = State::default();
        for i in 0..100 {
            state.record("f", 1000 + i, HOUR);
        }
        // 36 occurrences after the 64th were counted and not mailed.
        assert_eq!(sent(state.record("f", 1000 + HOUR, HOUR)), Some(37));
        assert_eq!(sent(state.record("f", 1001 + HOUR, HOUR)), Some(1));
    }

    #[test]
    fn a_mail_that_failed_gives_its_count_to_the_next() {
        let mut state = State::default();
        let Decision::Send(first) = state.record("f", 1000, HOUR) else {
            panic!("the first occurrence is mailed");
        };
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
    fn reported_groups_are_forgotten_after_their_window() {
        let mut state = State::default();
        state.record("a", 1000, HOUR);
        state.record("b", 1000, HOUR);
        state.record("b", 1001, HOUR);
        state.record("b", 1002, HOUR);
        state.forget_old(1000 + HOUR, HOUR);
        assert!(!state.groups.contains_key("a"), "fully reported");
        assert!(state.groups.contains_key("b"), "one occurrence unreported");
        state.forget_old(1000 + HOUR + FORGET_AFTER.as_secs(), HOUR);
        assert!(state.groups.is_empty());
    }

    #[test]
    fn file_state_is_shared_between_throttles_and_survives_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/throttle.json");
        let one = Throttle::new(Duration::from_secs(HOUR), Some(&path));
        let two = Throttle::new(Duration::from_secs(HOUR), Some(&path));
        assert!(matches!(one.record("f").unwrap(), Decision::Send(_)));
        assert!(matches!(two.record("f").unwrap(), Decision::Send(_)));
        assert!(matches!(
            one.record("f").unwrap(),
            Decision::Hold { count: 3, .. }
        ));
        std::fs::write(&path, "{not json").unwrap();
        assert!(matches!(two.record("f").unwrap(), Decision::Send(_)));
    }

    #[test]
    fn an_edited_state_file_with_impossible_counts_does_not_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("throttle.json");
        let key = fingerprint("error", "x");
        let now = unix_now();
        std::fs::write(
            &path,
            format!(
                r#"{{"groups":{{"{key}":{{"start":{now},"count":{},"claimed":{},"carried":{}}}}}}}"#,
                u64::MAX,
                u64::MAX,
                u64::MAX
            ),
        )
        .unwrap();
        let throttle = Throttle::new(Duration::from_secs(HOUR), Some(&path));
        assert!(throttle.record(&key).is_ok());
        let far_future = format!(
            r#"{{"groups":{{"{key}":{{"start":{},"count":3,"claimed":9,"carried":0}}}}}}"#,
            u64::MAX
        );
        std::fs::write(&path, far_future).unwrap();
        assert!(throttle.record(&key).is_ok());
    }

    #[test]
    fn zero_window_sends_everything() {
        let throttle = Throttle::new(Duration::ZERO, None);
        for _ in 0..5 {
            assert_eq!(sent(throttle.record("f").unwrap()), Some(1));
        }
    }
}
