//! Delivery with lettre's async SMTP transport, bounded by the config's timeout.

use std::error::Error as StdError;
use std::io;

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::TlsMode;
use crate::{Config, Error, SendFailure};

/// Sends `message` through the config's server; the whole exchange (connect, TLS,
/// AUTH, DATA) gets `config.timeout`.
pub(crate) async fn deliver(config: &Config, message: Message) -> Result<(), Error> {
    let transport = transport(config)?;
    match tokio::time::timeout(config.timeout, transport.send(message)).await {
        Ok(Ok(_response)) => Ok(()),
        Ok(Err(err)) => Err(classify(config, &err)),
        Err(_elapsed) => Err(send_error(
            config,
            SendFailure::Timeout(config.timeout),
            "no complete answer from the server in time".to_owned(),
        )),
    }
}

fn transport(config: &Config) -> Result<AsyncSmtpTransport<Tokio1Executor>, Error> {
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.server)
        .port(config.port)
        .timeout(Some(config.timeout));
    builder = match config.tls {
        TlsMode::None => builder.tls(Tls::None),
        TlsMode::Starttls => builder.tls(Tls::Required(tls_parameters(config)?)),
        TlsMode::Tls => builder.tls(Tls::Wrapper(tls_parameters(config)?)),
    };
    if let Some(credentials) = &config.credentials {
        builder = builder
            .credentials(Credentials::new(
                credentials.username.clone(),
                credentials.password.clone(),
            ))
            .authentication(vec![Mechanism::Plain, Mechanism::Login]);
    }
    Ok(builder.build())
}

fn tls_parameters(config: &Config) -> Result<TlsParameters, Error> {
    let tls_error = |err: lettre::transport::smtp::Error| {
        send_error(config, SendFailure::Tls, error_chain(&err))
    };
    let mut parameters = TlsParameters::builder(config.server.clone());
    if let Some(ca) = &config.ca_file {
        parameters =
            parameters.add_root_certificate(Certificate::from_pem(&ca.pem).map_err(tls_error)?);
    }
    parameters.build().map_err(tls_error)
}

fn classify(config: &Config, err: &lettre::transport::smtp::Error) -> Error {
    let detail = error_chain(err);
    let io_kind = io_error_kind(err);
    let code = err.status().map(u16::from);
    let failure = if err.is_timeout() || io_kind == Some(io::ErrorKind::TimedOut) {
        SendFailure::Timeout(config.timeout)
    } else if io_kind == Some(io::ErrorKind::ConnectionRefused) {
        SendFailure::ConnectionRefused
    } else if err.is_tls() || detail.contains("STARTTLS") || detail.contains("certificate") {
        SendFailure::Tls
    } else if matches!(code, Some(534 | 535)) {
        SendFailure::AuthRejected
    } else if code.is_some() {
        SendFailure::Rejected
    } else if io_kind.is_some() {
        SendFailure::Connection
    } else {
        SendFailure::Other
    };
    send_error(config, failure, detail)
}

fn send_error(config: &Config, failure: SendFailure, detail: String) -> Error {
    Error::Send {
        server: config.server.clone(),
        port: config.port,
        failure,
        detail,
    }
}

/// The error and its sources, each said once (lettre's messages repeat their source).
fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

fn io_error_kind(err: &(dyn StdError + 'static)) -> Option<io::ErrorKind> {
    let mut source: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(cause) = source {
        if let Some(io_err) = cause.downcast_ref::<io::Error>() {
            return Some(io_err.kind());
        }
        source = cause.source();
    }
    None
}
