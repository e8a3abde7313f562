//! What the CLI prints of the master's answers: aligned tables, ages, a
//! process's details. Plain text, for a terminal; the values the master sends
//! are shown with their control characters replaced, so that a name or a reason
//! cannot move the cursor or change the terminal's colours.

use std::fmt::Write;

use jiff::Timestamp;

use crate::api::{HostSummary, ProcessDetail, ProcessSummary, State};

/// Columns of text, each as wide as its widest cell, separated by two spaces.
#[derive(Debug, Clone, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Table {
        Table {
            rows: vec![headers.iter().map(|header| (*header).to_owned()).collect()],
        }
    }

    /// Adds a row (its cells cleaned of control characters).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.iter().map(|cell| printable(cell)).collect());
    }

    /// The table, one line per row, each ending with a newline; the last column
    /// is not padded.
    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|column| {
                self.rows
                    .iter()
                    .filter_map(|row| row.get(column))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (column, cell) in row.iter().enumerate() {
                if column > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                let width = widths.get(column).copied().unwrap_or(0);
                line.extend(std::iter::repeat_n(' ', width - cell.chars().count()));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `text` with every control character (escape sequences, new lines) shown as
/// `?`.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// How long ago `then` was, in its largest unit: `12s ago`, `5m ago`, `3h ago`,
/// `2d ago` (`0s ago` for a time in the future: clocks differ).
pub fn age(then: Timestamp, now: Timestamp) -> String {
    let seconds = now.duration_since(then).as_secs().max(0);
    let (value, unit) = match seconds {
        0..60 => (seconds, "s"),
        60..3600 => (seconds / 60, "m"),
        3600..86400 => (seconds / 3600, "h"),
        _ => (seconds / 86400, "d"),
    };
    format!("{value}{unit} ago")
}

/// A time to the second, in UTC: `2026-11-28T01:02:03Z`.
pub fn time(at: Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn or_dash(value: Option<&str>) -> String {
    value.unwrap_or("-").to_owned()
}

/// How a process ended: its exit status, the signal that ended it, or `-`.
fn exit(exit_code: Option<i32>, signal: Option<i32>) -> String {
    match (exit_code, signal) {
        (Some(code), _) => code.to_string(),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => "-".to_owned(),
    }
}

/// `dadd ps`: one line per process, as the master lists them (newest first).
pub fn process_table(processes: &[ProcessSummary], now: Timestamp) -> String {
    let mut table = Table::new(&["ID", "NAME", "STATE", "HOST", "UPDATED", "EXIT"]);
    for process in processes {
        table.row(vec![
            process.id.clone(),
            or_dash(process.name.as_deref()),
            process.state.clone(),
            or_dash(process.host.as_deref()),
            age(process.updated_at, now),
            exit(process.exit_code, process.signal),
        ]);
    }
    table.render()
}

/// `dadd hosts`: one line per host.
pub fn host_table(hosts: &[HostSummary], now: Timestamp) -> String {
    let mut table = Table::new(&["NAME", "STATUS", "HEARTBEAT", "RUNNING"]);
    for host in hosts {
        table.row(vec![
            host.name.clone(),
            if host.up { "up" } else { "down" }.to_owned(),
            age(host.last_heartbeat, now),
            format!("{}/{}", host.processes.len(), host.max_processes),
        ]);
    }
    table.render()
}

/// `dadd kill`: what became of the process. One that had not reached its host
/// has ended (with the master's reason); one on a host is killed by its worker.
pub fn kill_answer(process: &ProcessSummary) -> String {
    let id = printable(&process.id);
    let state = printable(&process.state);
    match (process.state.as_str(), &process.reason) {
        ("failed" | "success", Some(reason)) => format!("{id}: {state}: {}", printable(reason)),
        ("failed" | "success", None) => format!("{id}: {state}"),
        _ => format!(
            "{id}: {state} on {}: its worker kills it at its next heartbeat",
            printable(process.host.as_deref().unwrap_or("its host"))
        ),
    }
}

/// `dadd show`: a process's fields, its spec, and its state history.
pub fn process_detail(detail: &ProcessDetail, now: Timestamp) -> String {
    let process = &detail.process;
    let mut fields = Table::new(&["id", &process.id]);
    let mut field = |name: &str, value: String| fields.row(vec![name.to_owned(), value]);
    field("name", or_dash(process.name.as_deref()));
    field("state", process.state.clone());
    field("host", or_dash(process.host.as_deref()));
    field(
        "pid",
        process
            .pid
            .map_or_else(|| "-".to_owned(), |pid| pid.to_string()),
    );
    let at = |timestamp| format!("{} ({})", time(timestamp), age(timestamp, now));
    field("created", at(process.created_at));
    field("updated", at(process.updated_at));
    field("exit", exit(process.exit_code, process.signal));
    if let Some(reason) = &process.reason {
        field("reason", reason.clone());
    }
    field(
        "log",
        if detail.has_log {
            format!("yes: dadd logs {}", process.id)
        } else {
            "none".to_owned()
        },
    );
    let mut out = fields.render();
    out.push_str("\nspec:\n");
    match &detail.spec {
        Some(spec) => {
            let text = serde_json::to_string_pretty(spec).unwrap_or_else(|_| spec.to_string());
            for line in text.lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
        None => out.push_str("  none (the process was first known by its states)\n"),
    }
    out.push_str("\nstates:\n");
    if detail.states.is_empty() {
        out.push_str("  none reported yet\n");
    } else {
        let mut states = Table::new(&["  AT", "STATE", "DETAIL"]);
        for change in &detail.states {
            states.row(vec![
                format!("  {}", time(change.at)),
                change.state.name().to_owned(),
                state_detail(&change.state),
            ]);
        }
        out.push_str(&states.render());
    }
    out
}

/// What a state says beyond its name.
fn state_detail(state: &State) -> String {
    match state {
        State::Init { dir } => format!("dir {}", dir.display()),
        State::Running { pid } => format!("pid {pid}"),
        State::Failed {
            exit_code,
            signal,
            reason,
        } => match (exit_code, signal) {
            (Some(code), _) => format!("exit {code}: {reason}"),
            (None, Some(signal)) => format!("signal {signal}: {reason}"),
            (None, None) => reason.clone(),
        },
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell_and_lines_have_no_trailing_spaces() {
        let mut table = Table::new(&["ID", "NAME", "EXIT"]);
        table.row(vec!["a-long-id".into(), "x".into(), "-".into()]);
        table.row(vec!["b".into(), "été".into(), "".into()]);
        assert_eq!(
            table.render(),
            "ID         NAME  EXIT\n\
             a-long-id  x     -\n\
             b          été\n"
        );
    }

    #[test]
    fn control_characters_in_cells_are_shown_as_question_marks() {
        let mut table = Table::new(&["NAME"]);
        table.row(vec!["evil\x1b[2Jname\n".into()]);
        assert_eq!(table.render(), "NAME\nevil?[2Jname?\n");
    }

    #[test]
    fn ages_are_given_in_their_largest_unit() {
        let now: Timestamp = "2026-11-28T12:00:00Z".parse().unwrap();
        let ago = |seconds: i64| age(now - jiff::SignedDuration::from_secs(seconds), now);
        assert_eq!(ago(0), "0s ago");
        assert_eq!(ago(59), "59s ago");
        assert_eq!(ago(61), "1m ago");
        assert_eq!(ago(2 * 3600 + 5), "2h ago");
        assert_eq!(ago(3 * 86400), "3d ago");
        assert_eq!(ago(-30), "0s ago");
    }
}
