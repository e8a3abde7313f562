//! Headless Chromium for tests: the DOM of a page after its scripts ran.
//!
//! A test that serves a web page (a dashboard whose JavaScript fetches JSON and fills
//! a table, say) checks what a browser would show with [`dump_dom`]: Chromium loads
//! the page headless, runs its scripts, and prints the document as it then stands.
//!
//! Scripts are given a *virtual time budget*: Chromium runs the page on a virtual
//! clock that moves as fast as the page lets it, and stops when the budget is spent
//! (timers fire without being waited for), but not while a network request is
//! pending. A separate wall-clock timeout kills a browser that hangs.
//!
//! Each run has its own profile and `HOME` in a temporary directory, and runs
//! without the sandbox: as root Chromium refuses to start with it, and containers
//! often lack the namespaces it needs. The tests only load their own loopback pages.
//!
//! The browser is `chromium` (Debian's package, which `scripts/test` installs),
//! `chromium-browser` or `google-chrome`, the first found on `PATH`.
//!
//! ```no_run
//! # fn run() -> std::io::Result<()> {
//! let dom = testbed::chromium::dump_dom("http://127.0.0.1:8080/jobs")?;
//! assert!(dom.contains("<td>job-1</td>"), "{dom}");
//! # Ok(()) }
//! ```
//!
//! It blocks: from an async test, call it through `tokio::task::spawn_blocking`, so
//! that the server under test keeps running.

use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

use crate::process::{joined, which};

/// The names Chromium goes by, in the order they are looked for.
const PROGRAMS: [&str; 4] = [
    "chromium",
    "chromium-browser",
    "google-chrome",
    "google-chrome-stable",
];

/// The DOM of the page at `url` once its scripts ran, with the default budget and
/// timeout (see [`Chromium`]).
pub fn dump_dom(url: &str) -> io::Result<String> {
    Chromium::find()?.dump_dom(url)
}

/// A headless Chromium, and how long a page may take.
#[derive(Debug, Clone)]
pub struct Chromium {
    program: PathBuf,
    virtual_time_budget: Duration,
    timeout: Duration,
}

impl Chromium {
    /// Finds the browser; a virtual time budget of 5 s and a timeout of 60 s.
    pub fn find() -> io::Result<Chromium> {
        let program = PROGRAMS.iter().find_map(|name| which(name)).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "no Chromium ({}) is installed; run scripts/test (it installs chromium) or `apt-get install chromium`",
                    PROGRAMS.join(", ")
                ),
            )
        })?;
        Ok(Chromium {
            program,
            virtual_time_budget: Duration::from_secs(5),
            timeout: Duration::from_secs(60),
        })
    }

    /// How much virtual time the page's scripts get (timers included).
    pub fn virtual_time_budget(mut self, budget: Duration) -> Chromium {
        self.virtual_time_budget = budget;
        self
    }

    /// How long, on the wall clock, the browser may take in all (starting included)
    /// before it is killed and [`dump_dom`](Chromium::dump_dom) fails.
    pub fn timeout(mut self, timeout: Duration) -> Chromium {
        self.timeout = timeout;
        self
    }

    /// The browser's executable.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The DOM of the page at `url` once its scripts ran, serialized as HTML.
    ///
    /// Fails when the browser exits with an error or outlives the timeout, with what
    /// it logged.
    pub fn dump_dom(&self, url: &str) -> io::Result<String> {
        let dir = tempfile::Builder::new()
            .prefix("testbed-chromium-")
            .tempdir()?;
        let dom = dir.path().join("dom.html");
        let log = dir.path().join("chromium.log");
        let mut command = Command::new(&self.program);
        command
            .args(["--headless", "--no-sandbox", "--disable-gpu"])
            // Containers often have a tiny /dev/shm.
            .arg("--disable-dev-shm-usage")
            .arg(joined("--user-data-dir=", &dir.path().join("profile")))
            // Nothing but the page: no first-run work, no calls home.
            .args(["--no-first-run", "--no-default-browser-check"])
            .args([
                "--disable-background-networking",
                "--disable-component-update",
            ])
            .args(["--disable-sync", "--disable-extensions", "--mute-audio"])
            .arg(format!(
                "--virtual-time-budget={}",
                self.virtual_time_budget.as_millis()
            ))
            .arg("--dump-dom")
            .arg(url)
            .env("HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .env("XDG_CACHE_HOME", dir.path().join("cache"))
            .stdin(Stdio::null())
            .stdout(File::create(&dom)?)
            .stderr(File::create(&log)?)
            // Its own process group, so that a timeout kills the renderers and
            // helpers with the browser.
            .process_group(0);
        let mut child = command.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot start {}: {e}", self.program.display()),
            )
        })?;
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = rustix::process::kill_process_group(Pid::from_child(&child), Signal::KILL);
                let _ = child.wait();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "chromium did not finish {url} within {:?}; its log:\n{}",
                        self.timeout,
                        read_log(&log)
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        };
        if !status.success() {
            return Err(io::Error::other(format!(
                "chromium failed on {url} ({status}); its log:\n{}",
                read_log(&log)
            )));
        }
        Ok(String::from_utf8_lossy(&std::fs::read(&dom)?).into_owned())
    }
}

fn read_log(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::origin::{Origin, Reply};

    /// A page whose table is empty until its script has fetched the rows.
    const JOBS_PAGE: &str = r##"<!doctype html>
<html><body>
<table id="jobs"><tbody></tbody></table>
<script>
fetch("/jobs.json")
  .then((response) => response.json())
  .then((jobs) => {
    const body = document.querySelector("#jobs tbody");
    for (const job of jobs) {
      const row = body.insertRow();
      row.insertCell().textContent = job.name;
      row.insertCell().textContent = job.state;
    }
    document.body.dataset.loaded = "yes";
  });
</script>
</body></html>"##;

    async fn dump(chromium: Chromium, url: String) -> io::Result<String> {
        tokio::task::spawn_blocking(move || chromium.dump_dom(&url))
            .await
            .unwrap_or_else(|error| panic!("dump_dom panicked: {error}"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_dom_is_dumped_after_the_script_filled_the_table_from_json() {
        let origin = Origin::start().await.unwrap();
        origin.always(
            "/",
            Reply::ok(JOBS_PAGE).header("content-type", "text/html; charset=utf-8"),
        );
        origin.always(
            "/jobs.json",
            Reply::ok(r#"[{"name":"build","state":"done"},{"name":"deploy","state":"failed"}]"#)
                .header("content-type", "application/json")
                // Past the page's own load: the dump must wait for the fetch.
                .delay(Duration::from_millis(300)),
        );
        let dom = dump(Chromium::find().unwrap(), origin.url("/"))
            .await
            .unwrap();
        assert!(
            dom.contains(
                "<tr><td>build</td><td>done</td></tr><tr><td>deploy</td><td>failed</td></tr>"
            ),
            "{dom}"
        );
        assert!(dom.contains(r#"data-loaded="yes""#), "{dom}");
        assert_eq!(origin.hits("/jobs.json"), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_page_that_never_finishes_loading_times_out() {
        let origin = Origin::start().await.unwrap();
        origin.always("/", Reply::ok("late").delay(Duration::from_secs(120)));
        let chromium = Chromium::find().unwrap().timeout(Duration::from_secs(3));
        let started = Instant::now();
        let error = dump(chromium, origin.url("/")).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
        assert!(started.elapsed() < Duration::from_secs(30));
    }
}
