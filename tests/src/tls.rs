//! Test certificates, made with `openssl` (which `scripts/test` installs) at test time:
//! nothing secret is committed.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A certificate authority and a server certificate it signed, for `localhost` and
/// `127.0.0.1`: a client that trusts [`ca`](TestCertificates::ca) verifies the
/// server for real, as it would in production.
#[derive(Debug, Clone)]
pub struct TestCertificates {
    /// The CA certificate (PEM): what a client adds to its trusted roots.
    pub ca: PathBuf,
    /// The server certificate (PEM).
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
}

impl TestCertificates {
    /// Generates a CA and a server certificate in `dir` (valid for two days).
    pub fn generate(dir: &Path) -> io::Result<TestCertificates> {
        let path = |name: &str| dir.join(name);
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            Command::new("openssl")
                .args(["req", "-x509"])
                .args(ec)
                .arg("-keyout")
                .arg(path("ca.key"))
                .arg("-out")
                .arg(path("ca.pem"))
                .args(["-days", "2", "-subj", "/CN=testbed CA"]),
        )?;
        openssl(
            Command::new("openssl")
                .arg("req")
                .args(ec)
                .arg("-keyout")
                .arg(path("server.key"))
                .arg("-out")
                .arg(path("server.csr"))
                .args(["-subj", "/CN=localhost"]),
        )?;
        std::fs::write(
            path("server.ext"),
            "basicConstraints = CA:FALSE\n\
             keyUsage = digitalSignature, keyEncipherment\n\
             extendedKeyUsage = serverAuth\n\
             subjectAltName = DNS:localhost, IP:127.0.0.1\n",
        )?;
        openssl(
            Command::new("openssl")
                .args(["x509", "-req", "-in"])
                .arg(path("server.csr"))
                .arg("-CA")
                .arg(path("ca.pem"))
                .arg("-CAkey")
                .arg(path("ca.key"))
                .args(["-set_serial", "1", "-days", "2", "-extfile"])
                .arg(path("server.ext"))
                .arg("-out")
                .arg(path("server.pem")),
        )?;
        Ok(TestCertificates {
            ca: path("ca.pem"),
            cert: path("server.pem"),
            key: path("server.key"),
        })
    }
}

fn openssl(command: &mut Command) -> io::Result<()> {
    let output = command.stdin(Stdio::null()).output().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot run openssl (scripts/test installs it): {e}"),
        )
    })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "openssl failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )))
    }
}
