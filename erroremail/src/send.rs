//! Delivery with lettre's async SMTP transport, bounded by the config's timeout.

use std::io;

use lettre::transport::smtp::Error as SmtpError;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::TlsMode;
use crate::error::BoxedSource;
use crate::text::sources;
use crate::{Config, Error, SendFailure};

/// Sends `message` through the config's server; the whole exchange (connect, TLS,
/// AUTH, DATA) gets `config.timeout`.
pub(crate) async fn deliver(config: &Config, message: Message) -> Result<(), Error> {
    let transport = transport(config)?;
    match tokio::time::timeout(config.timeout, transport.send(message)).await {
        Ok(Ok(_response)) => Ok(()),
        Ok(Err(err)) => Err(send_error(config, classify(config, &err), Some(err))),
        Err(_elapsed) => Err(send_error(
            config,
            SendFailure::Timeout(config.timeout),
            None,
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
    let tls_error = |err| send_error(config, SendFailure::Tls, Some(err));
    let mut parameters = TlsParameters::builder(config.server.clone());
    if let Some(ca) = &config.ca_file {
        parameters =
            parameters.add_root_certificate(Certificate::from_pem(&ca.pem).map_err(tls_error)?);
    }
    parameters.build().map_err(tls_error)
}

fn classify(config: &Config, err: &SmtpError) -> SendFailure {
    let said = err.to_string();
    let io_kind =
        sources(err).find_map(|cause| cause.downcast_ref::<io::Error>().map(io::Error::kind));
    let code = err.status().map(u16::from);
    if err.is_timeout() || io_kind == Some(io::ErrorKind::TimedOut) {
        SendFailure::Timeout(config.timeout)
    } else if io_kind == Some(io::ErrorKind::ConnectionRefused) {
        SendFailure::ConnectionRefused
    } else if said.contains("STARTTLS is not supported") {
        SendFailure::NoStarttls
    } else if err.is_tls() || said.contains("certificate") {
        SendFailure::Tls
    } else if matches!(code, Some(534 | 535)) {
        SendFailure::AuthRejected
    } else if code.is_some() {
        SendFailure::Rejected
    } else if io_kind.is_some() {
        SendFailure::Connection
    } else {
        SendFailure::Other
    }
}

fn send_error(config: &Config, failure: SendFailure, source: Option<SmtpError>) -> Error {
    Error::Send {
        server: config.server.clone(),
        port: config.port,
        failure,
        source: source.map(|err| Box::new(err) as BoxedSource),
    }
}
