//! What a process wrote, kept within bounds: the end of its output (what a mail
//! can attach) and, apart, the end of its stderr (where the error usually is).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

/// Which of a process's output streams some bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// The output of a process, as it comes, kept in bounded memory: the last `limit`
/// bytes of stdout and stderr together (with a count of the bytes dropped before
/// them), and the last 64 KiB of stderr on their own.
///
/// A command that writes gigabytes (`pg_dump db > dump.sql` through a wrapper)
/// costs no more than `limit` bytes, and leaves nothing on disk. Lines are added
/// to the combined log whole, so that a line of stdout and one of stderr written
/// at the same moment do not cut into each other.
///
/// ```
/// use erroremail::{CapturedOutput, Exit, ProcessFailure, Stream};
///
/// let mut output = CapturedOutput::new(ProcessFailure::DEFAULT_ATTACH_LIMIT);
/// output.record(Stream::Stdout, b"copying 1000 rows\n");
/// output.record(Stream::Stderr, b"error: disk full\n");
/// let failure = ProcessFailure::new(["backup.sh"], Exit::Code(1)).output(output);
/// ```
#[derive(Debug, Clone)]
pub struct CapturedOutput {
    log: VecDeque<u8>,
    limit: usize,
    dropped: u64,
    stderr: VecDeque<u8>,
    stderr_dropped: bool,
    /// Each stream's line in progress, added to `log` when it ends.
    pending: [Vec<u8>; 2],
    written: [u64; 2],
}

/// Stderr kept on its own: enough for the last lines of any program.
const STDERR_KEPT: usize = 64 * 1024;

/// A line longer than this goes to the log before its end is seen.
const LONGEST_AWAITED_LINE: usize = 64 * 1024;

impl CapturedOutput {
    /// Keeps at most `limit` bytes of the output (its end).
    pub fn new(limit: u64) -> CapturedOutput {
        CapturedOutput {
            log: VecDeque::new(),
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            dropped: 0,
            stderr: VecDeque::new(),
            stderr_dropped: false,
            pending: [Vec::new(), Vec::new()],
            written: [0, 0],
        }
    }

    /// Records bytes the process wrote to `stream`.
    pub fn record(&mut self, stream: Stream, bytes: &[u8]) {
        let index = stream as usize;
        self.written[index] = self.written[index].saturating_add(bytes.len() as u64);
        if stream == Stream::Stderr {
            self.stderr_dropped |= keep_end(&mut self.stderr, bytes, STDERR_KEPT) > 0;
        }
        let pending = &mut self.pending[index];
        pending.extend_from_slice(bytes);
        // Whole lines go to the log; so does a line too long to wait for its end.
        let cut = match pending.iter().rposition(|&b| b == b'\n') {
            Some(newline) => newline + 1,
            None if pending.len() > LONGEST_AWAITED_LINE => pending.len(),
            None => return,
        };
        let lines: Vec<u8> = pending.drain(..cut).collect();
        self.dropped += keep_end(&mut self.log, &lines, self.limit);
    }

    /// Bytes written to `stream` in all, kept or not.
    pub fn written(&self, stream: Stream) -> u64 {
        self.written[stream as usize]
    }

    /// Whether the process wrote nothing at all.
    pub fn is_empty(&self) -> bool {
        self.written == [0, 0]
    }

    /// What is kept of the output: its end, from the start of a line when an
    /// earlier part was dropped.
    pub(crate) fn log(&self) -> KeptLog {
        let mut content: Vec<u8> = self.log.iter().copied().collect();
        for pending in &self.pending {
            content.extend_from_slice(pending);
        }
        let mut dropped = self.dropped;
        let over = content.len().saturating_sub(self.limit);
        content.drain(..over);
        dropped += over as u64;
        KeptLog::starting_at_a_line(content, dropped)
    }

    /// The end of stderr, when the process wrote to it.
    pub(crate) fn stderr(&self) -> Option<KeptLog> {
        if self.written(Stream::Stderr) == 0 {
            return None;
        }
        let content: Vec<u8> = self.stderr.iter().copied().collect();
        let dropped = if self.stderr_dropped {
            self.written(Stream::Stderr)
                .saturating_sub(content.len() as u64)
        } else {
            0
        };
        Some(KeptLog::starting_at_a_line(content, dropped))
    }

    /// The kept output as it is written to a file, with a first line that says
    /// what was dropped before it, if anything.
    pub fn to_log_file_content(&self) -> Vec<u8> {
        let log = self.log();
        let mut bytes = Vec::with_capacity(log.content.len() + 100);
        if log.dropped > 0 {
            bytes.extend_from_slice(
                format!(
                    "[erroremail: the first {} bytes of the output are not kept]\n",
                    log.dropped
                )
                .as_bytes(),
            );
        }
        bytes.extend_from_slice(&log.content);
        bytes
    }
}

/// Appends `bytes` to `kept` and drops from its front what goes beyond `limit`;
/// returns how many bytes were dropped.
fn keep_end(kept: &mut VecDeque<u8>, bytes: &[u8], limit: usize) -> u64 {
    let skipped = bytes.len().saturating_sub(limit);
    kept.extend(&bytes[skipped..]);
    let over = kept.len().saturating_sub(limit);
    kept.drain(..over);
    (skipped + over) as u64
}

/// The end of a log, as kept: what the mail shows and attaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeptLog {
    pub(crate) content: Vec<u8>,
    /// Bytes before `content` that are not kept.
    pub(crate) dropped: u64,
}

impl KeptLog {
    fn starting_at_a_line(mut content: Vec<u8>, mut dropped: u64) -> KeptLog {
        if dropped > 0
            && let Some(newline) = content.iter().position(|&b| b == b'\n')
            && newline + 1 < content.len()
        {
            content.drain(..=newline);
            dropped += newline as u64 + 1;
        }
        KeptLog { content, dropped }
    }

    /// The last `limit` bytes of the file at `path`, from the start of a line.
    pub(crate) fn read_end(path: &Path, limit: u64) -> io::Result<KeptLog> {
        let mut file = File::open(path)?;
        let size = file.metadata()?.len();
        let from = size.saturating_sub(limit);
        file.seek(SeekFrom::Start(from))?;
        let mut content = Vec::new();
        file.take(limit).read_to_end(&mut content)?;
        Ok(KeptLog::starting_at_a_line(content, from))
    }

    /// Its last `limit` bytes at most, from the start of a line.
    pub(crate) fn end(&self, limit: u64) -> KeptLog {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let over = self.content.len().saturating_sub(limit);
        KeptLog::starting_at_a_line(self.content[over..].to_vec(), self.dropped + over as u64)
    }

    /// Its last `count` lines (without their line breaks), and whether they are
    /// all there is.
    pub(crate) fn last_lines(&self, count: usize) -> (Vec<String>, bool) {
        let text = String::from_utf8_lossy(&self.content);
        let all: Vec<&str> = text.trim_end_matches('\n').split('\n').collect();
        if self.content.is_empty() {
            return (Vec::new(), self.dropped == 0);
        }
        let keep = all.len().min(count);
        let lines = all[all.len() - keep..]
            .iter()
            .map(|line| line.trim_end_matches('\r').to_owned())
            .collect();
        (lines, self.dropped == 0 && keep == all.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(log: &KeptLog) -> &str {
        std::str::from_utf8(&log.content).unwrap()
    }

    #[test]
    fn output_beyond_the_limit_is_dropped_from_the_front_at_a_line() {
        let mut output = CapturedOutput::new(100);
        for n in 1..=1000 {
            output.record(Stream::Stdout, format!("line {n}\n").as_bytes());
        }
        let log = output.log();
        assert!(log.content.len() <= 100);
        assert!(text(&log).starts_with("line "), "{}", text(&log));
        assert!(text(&log).ends_with("line 1000\n"));
        assert_eq!(
            log.dropped + log.content.len() as u64,
            output.written(Stream::Stdout)
        );
    }

    #[test]
    fn a_huge_stream_costs_only_the_limit() {
        let mut output = CapturedOutput::new(1024);
        let block = vec![b'x'; 64 * 1024];
        for _ in 0..100 {
            output.record(Stream::Stdout, &block);
        }
        assert!(output.log().content.len() <= 1024);
        assert_eq!(output.written(Stream::Stdout), 100 * 64 * 1024);
    }

    #[test]
    fn stderr_is_kept_apart_and_lines_of_the_two_streams_stay_whole() {
        let mut output = CapturedOutput::new(1024);
        output.record(Stream::Stdout, b"progress: 10");
        output.record(Stream::Stderr, b"error: disk full\n");
        output.record(Stream::Stdout, b"%\nprogress: 20%\n");
        assert_eq!(
            text(&output.log()),
            "error: disk full\nprogress: 10%\nprogress: 20%\n"
        );
        assert_eq!(text(&output.stderr().unwrap()), "error: disk full\n");
    }

    #[test]
    fn an_unfinished_last_line_is_kept() {
        let mut output = CapturedOutput::new(1024);
        output.record(Stream::Stderr, b"fatal: no newline");
        assert_eq!(text(&output.log()), "fatal: no newline");
        assert_eq!(
            output.stderr().unwrap().last_lines(5).0,
            ["fatal: no newline"]
        );
    }

    #[test]
    fn nothing_written_is_empty_and_has_no_stderr() {
        let output = CapturedOutput::new(1024);
        assert!(output.is_empty());
        assert!(output.stderr().is_none());
        assert_eq!(output.log().last_lines(5), (Vec::new(), true));
    }

    #[test]
    fn the_file_content_says_what_was_dropped() {
        let mut output = CapturedOutput::new(20);
        output.record(Stream::Stdout, b"first line\nsecond line\nthird\n");
        let file = String::from_utf8(output.to_log_file_content()).unwrap();
        assert_eq!(
            file,
            "[erroremail: the first 11 bytes of the output are not kept]\nsecond line\nthird\n"
        );
    }

    #[test]
    fn last_lines_of_a_file_say_whether_they_are_all() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, b"a\nb\nc\n").unwrap();
        let log = KeptLog::read_end(file.path(), 1000).unwrap();
        assert_eq!(
            log.last_lines(2),
            (vec!["b".to_owned(), "c".to_owned()], false)
        );
        assert!(log.last_lines(3).1);
        let cut = KeptLog::read_end(file.path(), 3).unwrap();
        assert_eq!(cut.last_lines(10), (vec!["c".to_owned()], false));
    }
}
