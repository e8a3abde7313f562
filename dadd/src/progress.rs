//! Progress bars for fetches, drawn on standard error while artifacts arrive.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use fetcher::{Progress, ProgressEvent};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// From this size on an artifact gets a bar; smaller ones arrive before a bar
/// would tell anything.
pub const LARGE: u64 = 4 * 1024 * 1024;

/// One bar per large artifact, on standard error, hidden when it is not a
/// terminal (a log file, a pipe, a test).
///
/// ```no_run
/// let bars = dadd::progress::FetchBars::stderr();
/// let fetcher = fetcher::Fetcher::builder()
///     .on_progress(bars.callback())
///     .build()?;
/// # Ok::<(), fetcher::FetchError>(())
/// ```
#[derive(Debug, Clone)]
pub struct FetchBars {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl FetchBars {
    /// Bars on standard error, when it is a terminal.
    pub fn stderr() -> FetchBars {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        FetchBars {
            inner: Arc::new(Inner {
                multi: MultiProgress::with_draw_target(target),
                bars: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The callback for [`FetcherBuilder::on_progress`](fetcher::FetcherBuilder::on_progress).
    pub fn callback(&self) -> impl Fn(&Progress<'_>) + Send + Sync + 'static {
        let inner = Arc::clone(&self.inner);
        move |progress| inner.update(progress.name, &progress.event)
    }
}

impl Inner {
    fn update(&self, name: &str, event: &ProgressEvent) {
        // A poisoned lock only means another callback panicked: bars are cosmetic.
        let mut bars = match self.bars.lock() {
            Ok(bars) => bars,
            Err(poisoned) => poisoned.into_inner(),
        };
        match event {
            ProgressEvent::Bytes { done, total } => {
                if !bars.contains_key(name) && total.unwrap_or(*done).max(*done) < LARGE {
                    return;
                }
                let bar = bars
                    .entry(name.to_owned())
                    .or_insert_with(|| self.new_bar(name, *total));
                bar.set_position(*done);
            }
            ProgressEvent::Retrying { attempt, error, .. } => {
                if let Some(bar) = bars.get(name) {
                    bar.set_message(format!(
                        "{}: retrying after attempt {attempt}: {error}",
                        name
                    ));
                }
            }
            ProgressEvent::Unpacking => {
                if let Some(bar) = bars.get(name) {
                    bar.set_message(format!("{}: unpacking", name));
                }
            }
            ProgressEvent::Done { .. } => {
                if let Some(bar) = bars.remove(name) {
                    bar.finish_and_clear();
                }
            }
            _ => {}
        }
    }

    fn new_bar(&self, name: &str, total: Option<u64>) -> ProgressBar {
        let bar = match total {
            Some(total) => ProgressBar::new(total),
            None => ProgressBar::new_spinner(),
        };
        let template = if total.is_some() {
            "{msg:30!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}"
        } else {
            "{msg:30!} {spinner} {bytes} {bytes_per_sec}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(name.to_owned());
        self.multi.add(bar)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(bars: &FetchBars, name: &str, event: ProgressEvent) {
        bars.inner.update(name, &event);
    }

    #[test]
    fn only_large_artifacts_get_a_bar_until_they_are_done() {
        let bars = FetchBars::stderr();
        event(
            &bars,
            "small",
            ProgressEvent::Bytes {
                done: 10,
                total: Some(10),
            },
        );
        event(
            &bars,
            "big",
            ProgressEvent::Bytes {
                done: 1 << 20,
                total: Some(LARGE * 2),
            },
        );
        assert_eq!(bars.inner.bars.lock().unwrap().len(), 1);
        event(
            &bars,
            "big",
            ProgressEvent::Done {
                served: fetcher::Served::Downloaded,
                size: LARGE * 2,
            },
        );
        assert!(bars.inner.bars.lock().unwrap().is_empty());
    }
}
