//! A failed process: what ran, how it ended, and the end of what it said.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, SystemTime};

use crate::output::KeptLog;
use crate::text::{self, local_time, shorten, strip_terminal_escapes};
use crate::{CapturedOutput, Failure, Stream};

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
            Exit::Signal(signal) => signal.saturating_add(128),
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

/// The name of a signal that ends processes in practice (`SIGTERM` for 15, by
/// Linux's numbers), or `None` for one without a common name.
pub fn signal_name(signal: i32) -> Option<&'static str> {
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
/// its output inline (those of stderr first), and the output attached (its end,
/// when it is larger than the cap).
///
/// The output comes from a [`CapturedOutput`] (what the command wrapper records) or
/// from a log file, read when the conversion happens; a log that cannot be read is
/// mentioned in the mail and does not stop it.
///
/// The mail's first line is the most useful line of the output: the last one on
/// stderr, or else the last one written. Failures of different programs are
/// never throttled as one group, however alike their exits.
#[derive(Debug, Clone)]
pub struct ProcessFailure {
    command: Vec<String>,
    exit: Exit,
    start_error: Option<String>,
    started: Option<SystemTime>,
    duration: Option<Duration>,
    working_dir: Option<PathBuf>,
    log: Log,
    tail_lines: usize,
    attach_limit: u64,
}

#[derive(Debug, Clone)]
enum Log {
    None,
    File(PathBuf),
    Captured(CapturedOutput),
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
            log: Log::None,
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
        self.log = Log::File(path.into());
        self
    }

    /// Its output, as recorded while it ran; stderr is then shown on its own too.
    pub fn output(mut self, output: CapturedOutput) -> ProcessFailure {
        self.log = Log::Captured(output);
        self
    }

    /// How many of the log's last lines to show in the mail (default 50).
    pub fn tail_lines(mut self, lines: usize) -> ProcessFailure {
        self.tail_lines = lines;
        self
    }

    /// How many bytes of a log file to attach at most (default 4 MiB); a larger
    /// log is attached from where its last `limit` bytes begin. A
    /// [`CapturedOutput`] has its own limit.
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

    /// How it ended, in a few words: `exit 2`, `killed by SIGTERM`, `not started: ...`.
    fn outcome(&self) -> String {
        match (&self.start_error, self.exit) {
            (Some(error), _) => format!("not started: {error}"),
            (None, Exit::Code(code)) => format!("exit {code}"),
            (None, Exit::Signal(signal)) => match signal_name(signal) {
                Some(name) => format!("killed by {name}"),
                None => format!("killed by signal {signal}"),
            },
        }
    }
}

/// A line of the log longer than this is cut: the tail is for reading, the
/// attachment has it all.
const MAX_LINE_CHARS: usize = 2000;

/// A log file is read this far back, at least, for its last lines.
const TAIL_READ_BYTES: u64 = 256 * 1024;

impl From<ProcessFailure> for Failure {
    fn from(process: ProcessFailure) -> Failure {
        let command_line = process.command_line();
        let program = process.program_name();
        let outcome = process.outcome();
        let shown = Shown::of(&process);
        let highlight = shown.as_ref().and_then(Shown::most_useful_line);
        let summary = format!("{program}: {outcome}");
        let ended = match &process.start_error {
            Some(error) => format!(
                "never started ({error}); status {}",
                process.exit.shell_status()
            ),
            None => process.exit.to_string(),
        };
        let mut failure = Failure::new("process", summary)
            // The program as given (two scripts in one directory are two jobs);
            // the rest of the command line is grouped without its numbers.
            .keyed_by(process.command.first().cloned().unwrap_or_default())
            .group_by(format!("{command_line}: {outcome}"))
            .fact("Command", command_line)
            .fact("Ended", ended);
        if let Some(line) = highlight {
            failure = failure.highlight(line);
        }
        if let Some(started) = process.started {
            failure = failure.fact("Started", local_time(started));
        }
        if let Some(duration) = process.duration {
            failure = failure.fact("Duration", text::duration(duration));
        }
        if let Some(dir) = &process.working_dir {
            failure = failure.fact("Working directory", dir.display().to_string());
        }
        match shown {
            Some(Ok(shown)) => shown.add_to(failure, &process, &program),
            Some(Err((path, err))) => failure.section(
                "Log",
                format!(
                    "{} could not be read: {err}; nothing is attached.",
                    path.display()
                ),
            ),
            None => failure,
        }
    }
}

/// What the mail shows of a process's output.
struct Shown {
    /// Stdout and stderr together, or the log file.
    log: KeptLog,
    /// Stderr apart, when it was recorded apart.
    stderr: Option<KeptLog>,
    /// Whether stdout said anything (when stderr was recorded apart).
    stdout_written: bool,
    /// Bytes in all.
    total: u64,
    /// What the mail calls it: "output" or "log".
    noun: &'static str,
}

impl Shown {
    fn of(process: &ProcessFailure) -> Option<Result<Shown, (PathBuf, io::Error)>> {
        match &process.log {
            Log::None => None,
            Log::File(path) => {
                let read = process.attach_limit.max(TAIL_READ_BYTES);
                Some(
                    KeptLog::read_end(path, read)
                        .map(|log| Shown {
                            total: log.dropped + log.content.len() as u64,
                            log,
                            stderr: None,
                            stdout_written: true,
                            noun: "log",
                        })
                        .map_err(|err| (path.clone(), err)),
                )
            }
            Log::Captured(output) => Some(Ok(Shown {
                log: output.log(),
                stderr: output.stderr(),
                stdout_written: output.written(Stream::Stdout) > 0,
                total: output
                    .written(Stream::Stdout)
                    .saturating_add(output.written(Stream::Stderr)),
                noun: "output",
            })),
        }
    }

    /// The last line on stderr that says something, or else the last such line of
    /// the whole output.
    fn most_useful_line(result: &Result<Shown, (PathBuf, io::Error)>) -> Option<String> {
        let shown = result.as_ref().ok()?;
        let last_said = |log: &KeptLog| {
            let text = String::from_utf8_lossy(&log.content);
            text.lines()
                .rev()
                .map(|line| strip_terminal_escapes(line).trim().to_owned())
                .find(|line| !line.is_empty())
        };
        shown
            .stderr
            .as_ref()
            .and_then(last_said)
            .or_else(|| last_said(&shown.log))
            .map(|line| shorten(&line, MAX_LINE_CHARS))
    }

    fn add_to(self, mut failure: Failure, process: &ProcessFailure, program: &str) -> Failure {
        let tail = |log: &KeptLog| -> (String, bool) {
            let (lines, complete) = log.last_lines(process.tail_lines);
            let lines: Vec<String> = lines
                .iter()
                .map(|line| shorten(line, MAX_LINE_CHARS))
                .collect();
            (lines.join("\n"), complete)
        };
        if let Some(stderr) = self.stderr.as_ref().filter(|_| self.stdout_written) {
            let (text, complete) = tail(stderr);
            let title = if complete {
                "Stderr".to_owned()
            } else {
                format!("Last {} lines of stderr", process.tail_lines)
            };
            failure = failure.section(title, text);
        }
        if self.total == 0 {
            let noun = self.noun;
            return failure.section(noun_title(noun), format!("(none: the {noun} is empty)"));
        }
        let (mut text, complete) = tail(&self.log);
        let attached = self.log.end(process.attach_limit);
        let streams = if self.stderr.is_some() && self.stdout_written {
            "stdout and stderr, "
        } else {
            ""
        };
        let size = human_bytes(self.total);
        let title = if complete {
            format!("{} ({streams}{size})", noun_title(self.noun))
        } else {
            format!(
                "Last {} lines of the {} ({streams}{size} in all)",
                process.tail_lines, self.noun
            )
        };
        if attached.dropped > 0 {
            text.push_str(&format!(
                "\n\n[The attachment holds the last {} of the {}; the {} before them are left out.]",
                human_bytes(attached.content.len() as u64),
                self.noun,
                human_bytes(attached.dropped)
            ));
        }
        failure
            .section(title, text)
            .attach(format!("{program}.log"), attached.content)
    }
}

fn noun_title(noun: &str) -> String {
    let mut chars = noun.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
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

    fn titles(failure: &Failure) -> Vec<&str> {
        failure
            .sections()
            .iter()
            .map(|s| s.title.as_str())
            .collect()
    }

    #[test]
    fn exit_status_and_signal_read_as_a_shell_reports_them() {
        assert_eq!(Exit::Code(3).to_string(), "exit status 3");
        assert_eq!(Exit::Code(3).shell_status(), 3);
        assert_eq!(Exit::Signal(9).to_string(), "killed by signal 9 (SIGKILL)");
        assert_eq!(Exit::Signal(9).shell_status(), 137);
    }

    #[test]
    fn shell_status_of_an_impossible_signal_does_not_overflow() {
        assert_eq!(Exit::Signal(i32::MAX).shell_status(), i32::MAX);
    }

    #[test]
    fn tail_shows_the_last_lines_and_the_whole_log_is_attached() {
        let log = log_with(100);
        let failure: Failure = ProcessFailure::new(["job"], Exit::Code(1))
            .log_file(log.path())
            .tail_lines(3)
            .into();
        assert_eq!(section_text(&failure), "line 98\nline 99\nline 100");
        assert!(titles(&failure)[0].starts_with("Last 3 lines of the log"));
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
        assert_eq!(titles(&failure), ["Log (14 bytes)"]);
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
        assert!(section_text(&failure).ends_with("are left out.]"));
    }

    #[test]
    fn unreadable_log_is_mentioned_and_the_failure_still_reported() {
        let failure: Failure = ProcessFailure::new(["job"], Exit::Code(2))
            .log_file("/nonexistent/job.log")
            .into();
        assert!(section_text(&failure).contains("could not be read"));
        assert!(section_text(&failure).contains("nothing is attached"));
        assert!(failure.attachment().is_none());
        assert_eq!(failure.summary(), "job: exit 2");
    }

    #[test]
    fn stderr_is_shown_first_and_its_last_line_leads_the_mail() {
        let mut output = CapturedOutput::new(1 << 20);
        output.record(Stream::Stderr, b"pg_dump: error: connection refused\n");
        for n in 1..=100 {
            output.record(Stream::Stdout, format!("row {n}\n").as_bytes());
        }
        let failure: Failure = ProcessFailure::new(["/usr/local/bin/backup.sh"], Exit::Code(2))
            .output(output)
            .tail_lines(3)
            .into();
        assert_eq!(
            titles(&failure),
            [
                "Stderr",
                "Last 3 lines of the output (stdout and stderr, 727 bytes in all)"
            ]
        );
        assert_eq!(
            failure.sections()[0].text,
            "pg_dump: error: connection refused"
        );
        assert_eq!(section_text(&failure), "row 98\nrow 99\nrow 100");
        assert_eq!(
            failure.highlighted(),
            Some("pg_dump: error: connection refused")
        );
        assert_eq!(failure.summary(), "backup.sh: exit 2");
        assert_eq!(
            failure.message(),
            "backup.sh: exit 2 — pg_dump: error: connection refused"
        );
    }

    #[test]
    fn without_stderr_the_last_line_written_leads_and_colours_are_left_out() {
        let mut output = CapturedOutput::new(1 << 20);
        output.record(
            Stream::Stdout,
            b"step 1\n\x1b[31mFAILED: 3 tests\x1b[0m\n\n",
        );
        let failure: Failure = ProcessFailure::new(["make", "test"], Exit::Code(2))
            .output(output)
            .into();
        assert_eq!(failure.highlighted(), Some("FAILED: 3 tests"));
        assert_eq!(titles(&failure), ["Output (33 bytes)"]);
        assert!(
            failure.attachment().unwrap().content.contains(&0x1b),
            "the attachment keeps what was written"
        );
    }

    #[test]
    fn a_long_useful_line_stays_out_of_the_message() {
        let mut output = CapturedOutput::new(1 << 20);
        output.record(Stream::Stderr, format!("{}\n", "x".repeat(200)).as_bytes());
        let failure: Failure = ProcessFailure::new(["job"], Exit::Signal(15))
            .output(output)
            .into();
        assert_eq!(failure.message(), "job: killed by SIGTERM");
        assert_eq!(failure.highlighted().map(str::len), Some(200));
    }

    #[test]
    fn no_output_is_said_and_nothing_attached() {
        let failure: Failure = ProcessFailure::new(["job"], Exit::Code(1))
            .output(CapturedOutput::new(1024))
            .into();
        assert_eq!(titles(&failure), ["Output"]);
        assert!(section_text(&failure).contains("empty"));
        assert!(failure.attachment().is_none());
        assert_eq!(failure.highlighted(), None);
    }

    #[test]
    fn command_line_is_quoted_for_a_shell() {
        let failure: Failure =
            ProcessFailure::new(["sh", "-c", "echo 'hi' > /tmp/x"], Exit::Signal(15)).into();
        assert_eq!(failure.facts()[0].1, r"sh -c 'echo '\''hi'\'' > /tmp/x'");
        assert_eq!(failure.summary(), "sh: killed by SIGTERM");
        assert_eq!(failure.facts()[1].1, "killed by signal 15 (SIGTERM)");
    }

    fn fingerprint(failure: &Failure) -> String {
        crate::throttle::fingerprint(failure.kind(), failure.keys(), failure.grouping())
    }

    #[test]
    fn commands_that_differ_in_numbers_are_one_group() {
        let failure = |batch: u32| -> Failure {
            let script = format!(
                "echo 'importing batch {batch} from /srv/in/{batch}.csv into the warehouse'"
            );
            ProcessFailure::new(["sh", "-c", &script], Exit::Code(1)).into()
        };
        assert_eq!(fingerprint(&failure(7)), fingerprint(&failure(42)));
    }

    #[test]
    fn different_programs_in_one_directory_are_different_groups() {
        let failure =
            |program: &str| -> Failure { ProcessFailure::new([program], Exit::Code(1)).into() };
        assert_ne!(
            fingerprint(&failure("/x/backup-db.sh")),
            fingerprint(&failure("/x/rotate-logs.sh"))
        );
    }

    #[test]
    fn command_that_cannot_start_reports_status_127() {
        let err = io::Error::from(io::ErrorKind::NotFound);
        let failure = ProcessFailure::not_started(["no-such-program"], &err);
        assert_eq!(failure.exit().shell_status(), 127);
        let failure: Failure = failure.into();
        assert!(
            failure
                .summary()
                .starts_with("no-such-program: not started: "),
            "{}",
            failure.summary()
        );
    }
}
