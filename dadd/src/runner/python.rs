//! The spec's Python environment: a virtualenv in the run directory, made with the
//! host's `python3`, with `python_deps` installed by its pip.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::RunError;
use crate::spec::Spec;

/// The virtualenv's directory, in the run directory.
pub const VENV_DIR: &str = "venv";

/// The interpreter that makes the virtualenv.
const HOST_PYTHON: &str = "python3";

/// Makes the virtualenv and installs the deps, one `pip install` per dep string
/// (so that the pip options a string carries apply to it alone), with
/// `python_cheeseshop` as the index unless the string names its own (`-i URL`
/// after it wins). What python and pip say goes to `log`, where a failure's mail
/// shows it. Returns the virtualenv's directory.
pub(crate) async fn build(
    spec: &Spec,
    dir: &Path,
    log: &std::fs::File,
) -> Result<PathBuf, RunError> {
    let venv = dir.join(VENV_DIR);
    let make = [OsString::from("-m"), "venv".into(), venv.clone().into()];
    run_step(HOST_PYTHON.as_ref(), &make, dir, log, "python3 -m venv").await?;
    let python = venv.join("bin").join("python");
    for dep in &spec.python_deps {
        let mut args: Vec<OsString> = ["-m", "pip", "install", "--disable-pip-version-check"]
            .into_iter()
            .map(OsString::from)
            .collect();
        if let Some(index) = &spec.python_cheeseshop {
            args.extend(["--index-url".into(), index.as_str().into()]);
        }
        let words = shell_words::split(dep).map_err(|error| RunError::PythonEnv {
            step: format!("pip install {dep}"),
            reason: error.to_string(),
        })?;
        args.extend(words.into_iter().map(OsString::from));
        run_step(
            python.as_os_str(),
            &args,
            dir,
            log,
            &format!("pip install {dep}"),
        )
        .await?;
    }
    tracing::info!(venv = %venv.display(), deps = spec.python_deps.len(), "Python environment built");
    Ok(venv)
}

async fn run_step(
    program: &std::ffi::OsStr,
    args: &[OsString],
    dir: &Path,
    log: &std::fs::File,
    step: &str,
) -> Result<(), RunError> {
    let failed = |reason: String| RunError::PythonEnv {
        step: step.to_owned(),
        reason,
    };
    let stdout = log.try_clone().map_err(|error| failed(error.to_string()))?;
    let stderr = log.try_clone().map_err(|error| failed(error.to_string()))?;
    let status = tokio::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        // pip's own check for a newer pip: a run must not need the internet.
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        // A stop or a timeout of the run must not leave pip behind.
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|error| {
            failed(format!(
                "cannot start {}: {error}",
                Path::new(program).display()
            ))
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(failed(format!(
            "{} (see {})",
            erroremail::Exit::from(status),
            super::LOG_FILE
        )))
    }
}

/// The command's `PATH`: the virtualenv's `bin` first, then the spec's `PATH`, or
/// else this process's.
pub(crate) fn path_with(venv: &Path, spec: &Spec) -> Result<OsString, RunError> {
    let rest: Vec<PathBuf> = match spec.env.get("PATH") {
        Some(path) => std::env::split_paths(path).collect(),
        None => std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).collect())
            .unwrap_or_default(),
    };
    std::env::join_paths(std::iter::once(venv.join("bin")).chain(rest)).map_err(|error| {
        RunError::PythonEnv {
            step: "PATH".to_owned(),
            reason: error.to_string(),
        }
    })
}
