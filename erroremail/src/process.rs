//! A failed process: what ran, how it ended, and the end of what it said.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, SystemTime};

use crate::Failure;
use crate::text::{http_date, shorten};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this status.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl Exit {
    /// Whether the process succeeded (exit status 0).
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }

    /// The status a shell reports for it: the exit status, or 128 + the signal.
    pub fn shell_status(self) -> i32 {
        match self {
            Exit::Code(code) => code,
            Exit::Signal(signal) => 128 + signal,
        }
    }
}

impl From<ExitStatus> for Exit {
    fn from(status: ExitStatus) -> Exit {
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            if let Some(signal) = status.signal() {
                return Exit::Signal(signal);
            }
        }
        // Only a stopped or continued process has neither; `wait` reports neither.
        Exit::Code(status.code().unwrap_or(-1))
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Exit::Code(code) => write!(f, "exit status {code}"),
            Exit::Signal(signal) => match signal_name(signal) {
                Some(name) => write!(f, "killed by signal {signal} ({name})"),
                None => write!(f, "killed by signal {signal}"),
            },
        }
    }
}

/// Linux's numbers of the signals that end processes in practice.
fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        _ => return None,
    })
}

/// A process that failed: converts into a [`Failure`] whose mail shows the command,
/// how it ended, the host, start, duration and working directory, the last lines of
/// its log inline, and the log attached (its end, when it is larger than the cap).
///
/// The log is read when the conversion happens; a log that cannot be read is
/// mentioned in the mail and does not stop it.
#[derive(Debug, Clone)]
pub struct ProcessFailure {
    command: Vec<String>,
    exit: Exit,
    start_error: Option<String>,
    started: Option<SystemTime>,
    duration: Option<Duration>,
    working_dir: Option<PathBuf>,
    log: Option<PathBuf>,
    tail_lines: usize,
    attach_limit: u64,
}

impl ProcessFailure {
    /// Lines of the log shown in the mail by default.
    pub const DEFAULT_TAIL_LINES: usize = 50;
    /// Bytes of the log attached by default (its end, when it is larger).
    pub const DEFAULT_ATTACH_LIMIT: u64 = 4 * 1024 * 1024;

    /// `command` (the program, then its arguments) ended with `exit`.
    pub fn new<I, S>(command: I, exit: Exit) -> ProcessFailure
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ProcessFailure {
            command: command.into_iter().map(Into::into).collect(),
            exit,
            start_error: None,
            started: None,
            duration: None,
            working_dir: None,
            log: None,
            tail_lines: Self::DEFAULT_TAIL_LINES,
            attach_limit: Self::DEFAULT_ATTACH_LIMIT,
        }
    }

    /// `command` could not be started at all; the status is the one shells use
    /// (127 when the program is not found, 126 otherwise).
    pub fn not_started<I, S>(command: I, error: &io::Error) -> ProcessFailure
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let code = if error.kind() == io::ErrorKind::NotFound {
            127
        } else {
            126
        };
        let mut failure = ProcessFailure::new(command, Exit::Code(code));
        failure.start_error = Some(error.to_string());
        failure
    }

    /// When it started.
    pub fn started(mut self, at: SystemTime) -> ProcessFailure {
        self.started = Some(at);
        self
    }

    /// How long it ran.
    pub fn duration(mut self, duration: Duration) -> ProcessFailure {
        self.duration = Some(duration);
        self
    }

    /// Where it ran.
    pub fn working_dir(mut self, dir: impl Into<PathBuf>) -> ProcessFailure {
        self.working_dir = Some(dir.into());
        self
    }

    /// The file that holds its output.
    pub fn log_file(mut self, path: impl Into<PathBuf>) -> ProcessFailure {
        self.log = Some(path.into());
        self
    }

    /// How many of the log's last lines to show in the mail (default 50).
    pub fn tail_lines(mut self, lines: usize) -> ProcessFailure {
        self.tail_lines = lines;
        self
    }

    /// How many bytes of the log to attach at most (default 4 MiB); a larger log
    /// is attached from where its last `limit` bytes begin.
    pub fn attach_limit(mut self, limit: u64) -> ProcessFailure {
        self.attach_limit = limit;
        self
    }

    /// How it ended.
    pub fn exit(&self) -> Exit {
        self.exit
    }

    fn command_line(&self) -> String {
        self.command
            .iter()
            .map(|arg| shell_quote(arg))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn program_name(&self) -> String {
        self.command
            .first()
            .and_then(|program| Path::new(program).file_name())
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| "command".to_owned())
    }
}

impl From<ProcessFailure> for Failure {
    fn from(process: ProcessFailure) -> Failure {
        let command_line = process.command_line();
        let describe = |command: &str| match &process.start_error {
            Some(error) => format!("`{command}` could not be started: {error}"),
            None => match process.exit {
                Exit::Code(_) => format!("`{command}` failed with {}", process.exit),
                Exit::Signal(_) => format!("`{command}` was {}", process.exit),
            },
        };
        // The subject shows the command shortened; repeats are grouped by all of it,
        // so that a number that changes width does not move the cut.
        let summary = describe(&shorten(&command_line, 60));
        let group = describe(&command_line);
        let mut failure = Failure::new("process", summary)
            .group_by(group)
            .fact("Command", command_line);
        failure = match &process.start_error {
            Some(error) => failure.fact(
                "Ended",
                format!(
                    "never started ({error}); status {}",
                    process.exit.shell_status()
                ),
            ),
            None => failure.fact("Ended", process.exit.to_string()),
        };
        if let Some(started) = process.started {
            failure = failure.fact("Started", http_date(started));
        }
        if let Some(duration) = process.duration {
            failure = failure.fact("Duration", human_duration(duration));
        }
        if let Some(dir) = &process.working_dir {
            failure = failure.fact("Working directory", dir.display().to_string());
        }
        match &process.log {
            Some(path) => with_log(failure, &process, path),
            None => failure,
        }
    }
}

fn with_log(failure: Failure, process: &ProcessFailure, path: &Path) -> Failure {
    let read = || -> io::Result<(Tail, LogCopy)> {
        let mut file = File::open(path)?;
        let tail = read_tail(&mut file, process.tail_lines)?;
        let copy = read_copy(&mut file, process.attach_limit)?;
        Ok((tail, copy))
    };
    let (tail, copy) = match read() {
        Ok(read) => read,
        Err(err) => {
            return failure.section(
                "Log",
                format!("{} could not be read: {err}", path.display()),
            );
        }
    };
    let filename = format!("{}.log", process.program_name());
    let title = if tail.size == 0 {
        "Log: empty".to_owned()
    } else if tail.complete {
        format!("Log ({}, attached as {filename})", human_bytes(tail.size))
    } else {
        format!(
            "Last {} lines of the log ({}, attached as {filename})",
            tail.lines.len(),
            human_bytes(tail.size)
        )
    };
    let mut text = tail.lines.join("\n");
    if copy.skipped > 0 {
        text.push_str(&format!(
            "\n\n[The log is larger than the attachment limit: the attachment holds its last {}; its first {} are left out.]",
            human_bytes(copy.content.len() as u64),
            human_bytes(copy.skipped)
        ));
    }
    let failure = failure.section(title, text);
    if tail.size == 0 {
        failure
    } else {
        failure.attach(filename, copy.content)
    }
}

/// The log's last lines.
struct Tail {
    lines: Vec<String>,
    /// Whether `lines` is the whole log.
    complete: bool,
    size: u64,
}

/// A line longer than this is cut: the tail is for reading, the attachment has it all.
const MAX_LINE_CHARS: usize = 2000;
/// Reading backwards stops here, whatever the line count.
const MAX_TAIL_BYTES: u64 = 1024 * 1024;

fn read_tail(file: &mut File, lines: usize) -> io::Result<Tail> {
    let size = file.metadata()?.len();
    let want = size.min(MAX_TAIL_BYTES);
    let mut start = size;
    let mut chunk = Vec::new();
    // Read backwards in blocks until the block holds more line breaks than lines
    // wanted (one more marks where the first wanted line begins).
    while start > size - want {
        let step = (64 * 1024).min(start - (size - want));
        start -= step;
        let mut block = vec![0; step as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut block)?;
        block.extend_from_slice(&chunk);
        chunk = block;
        let breaks = chunk.iter().filter(|&&b| b == b'\n').count();
        if breaks > lines {
            break;
        }
    }
    let text = String::from_utf8_lossy(&chunk);
    let all: Vec<&str> = text.trim_end_matches('\n').split('\n').collect();
    let from_start = start == 0;
    let keep = all.len().min(lines);
    // A first line that begins mid-file is a fragment unless it is all we have.
    let complete = from_start && keep == all.len();
    let lines = all[all.len() - keep..]
        .iter()
        .map(|line| shorten(line.trim_end_matches('\r'), MAX_LINE_CHARS))
        .collect();
    Ok(Tail {
        lines: if size == 0 { Vec::new() } else { lines },
        complete,
        size,
    })
}

/// What is attached: the whole log, or its end from a line boundary.
struct LogCopy {
    content: Vec<u8>,
    skipped: u64,
}

fn read_copy(file: &mut File, limit: u64) -> io::Result<LogCopy> {
    let size = file.metadata()?.len();
    let from = size.saturating_sub(limit);
    file.seek(SeekFrom::Start(from))?;
    let mut content = Vec::new();
    file.take(limit).read_to_end(&mut content)?;
    let mut skipped = from;
    if from > 0 {
        let cut = content
            .iter()
            .position(|&b| b == b'\n')
            .map_or(0, |newline| newline + 1);
        content.drain(..cut);
        skipped += cut as u64;
    }
    Ok(LogCopy { content, skipped })
}

/// Quotes an argument for a POSIX shell when it needs it, so that the command line
/// in the mail can be pasted into a terminal.
fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

fn human_duration(duration: Duration) -> String {
    let total = duration.as_secs();
    if total < 60 {
        return format!("{:.3}s", duration.as_secs_f64());
    }
    let (hours, minutes, seconds) = (total / 3600, total / 60 % 60, total % 60);
    if hours > 0 {
        format!("{hours}h {minutes}m {seconds}s")
    } else {
        format!("{minutes}m {seconds}s")
    }
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn log_with(lines: usize) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        for n in 1..=lines {
            writeln!(file, "line {n}").unwrap();
        }
        file
    }

    fn section_text(failure: &Failure) -> &str {
        &failure.sections().last().unwrap().text
    }

    #[test]
    fn exit_status_and_signal_read_as_a_shell_reports_them() {
        assert_eq!(Exit::Code(3).to_string(), "exit status 3");
        assert_eq!(Exit::Code(3).shell_status(), 3);
        assert_eq!(Exit::Signal(9).to_string(), "killed by signal 9 (SIGKILL)");
        assert_eq!(Exit::Signal(9).shell_status(), 137);
    }

    #[test]
    fn tail_shows_the_last_lines_and_the_whole_log_is_attached() {
        let log = log_with(100);
        let failure: Failure = ProcessFailure::new(["job"], Exit::Code(1))
            .log_file(log.path())
            .tail_lines(3)
            .into();
        assert_eq!(section_text(&failure), "line 98\nline 99\nline 100");
        assert!(failure.sections()[0].title.starts_with("Last 3 lines"));
        let attachment = failure.attachment().unwrap();
        assert_eq!(attachment.filename, "job.log");
        assert_eq!(
            attachment.content,
            std::fs::read(log.path()).unwrap(),
            "the whole log"
        );
    }

    #[test]
    fn short_log_is_shown_whole() {
        let log = log_with(2);
        let failure: Failure = ProcessFailure::new(["job"], Exit::Code(1))
            .log_file(log.path())
            .into();
        assert_eq!(section_text(&failure), "line 1\nline 2");
        assert!(failure.sections()[0].title.starts_with("Log ("));
    }

    #[test]
    fn tail_reaches_back_across_read_blocks() {
        let mut log = tempfile::NamedTempFile::new().unwrap();
        let long = "x".repeat(100 * 1024);
        writeln!(log, "first").unwrap();
        writeln!(log, "{long}").unwrap();
        writeln!(log, "last").unwrap();
        let failure: Failure = ProcessFailure::new(["job"], Exit::Code(1))
            .log_file(log.path())
            .tail_lines(3)
            .into();
        let text = section_text(&failure);
        assert!(text.starts_with("first\nxxx"), "{}", &text[..20]);
        assert!(text.ends_with("…\nlast"));
    }

    #[test]
    fn large_log_attaches_its_end_from_a_line_boundary_and_says_so() {
        let log = log_with(1000);
        let failure: Failure = ProcessFailure::new(["job"], Exit::Code(1))
            .log_file(log.path())
            .attach_limit(100)
            .into();
        let attachment = String::from_utf8(failure.attachment().unwrap().content.clone()).unwrap();
        assert!(attachment.starts_with("line "), "{attachment}");
        assert!(attachment.ends_with("line 1000\n"));
        assert!(attachment.len() <= 100);
        assert!(section_text(&failure).contains("left out"));
    }

    #[test]
    fn unreadable_log_is_mentioned_and_the_failure_still_reported() {
        let failure: Failure = ProcessFailure::new(["job"], Exit::Code(2))
            .log_file("/nonexistent/job.log")
            .into();
        assert!(section_text(&failure).contains("could not be read"));
        assert!(failure.summary().contains("exit status 2"));
    }

    #[test]
    fn command_line_is_quoted_for_a_shell() {
        let failure: Failure =
            ProcessFailure::new(["sh", "-c", "echo 'hi' > /tmp/x"], Exit::Signal(15)).into();
        assert_eq!(failure.facts()[0].1, r"sh -c 'echo '\''hi'\'' > /tmp/x'");
        assert!(
            failure
                .summary()
                .ends_with("was killed by signal 15 (SIGTERM)")
        );
    }

    #[test]
    fn long_commands_are_grouped_by_all_of_their_text() {
        let failure = |batch: u32| -> Failure {
            let script = format!(
                "echo 'importing batch {batch} from /srv/in/{batch}.csv into the warehouse'"
            );
            ProcessFailure::new(["sh", "-c", &script], Exit::Code(1)).into()
        };
        let (one_digit, two_digits) = (failure(7), failure(42));
        assert!(one_digit.summary().contains('…'), "{}", one_digit.summary());
        let fingerprint = |f: &Failure| crate::throttle::fingerprint(f.kind(), f.grouping());
        assert_eq!(fingerprint(&one_digit), fingerprint(&two_digits));
    }

    #[test]
    fn command_that_cannot_start_reports_status_127() {
        let err = io::Error::from(io::ErrorKind::NotFound);
        let failure = ProcessFailure::not_started(["no-such-program"], &err);
        assert_eq!(failure.exit().shell_status(), 127);
        let failure: Failure = failure.into();
        assert!(failure.summary().contains("could not be started"));
    }
}
