//! The panic hook, alone in its test binary: a panic hook is global to the process.

// Test helpers outside #[test] functions unwrap too: a failure there is a failed test.
#![allow(clippy::unwrap_used)]

use erroremail::{Config, ErrorEmail};
use testbed::smtp::{SmtpOptions, SmtpServer};

#[test]
fn panic_hook_mails_the_panic_with_location_thread_and_backtrace() {
    let server = SmtpServer::start(SmtpOptions::plain()).unwrap();
    let config = Config::from_toml(&format!(
        "server = '127.0.0.1'\nport = {}\ntls = 'none'\nfrom = 'errors@example.com'\nto = 'ops@example.com'\nsubject = '[{{host}}] {{message}}'",
        server.port()
    ))
    .unwrap();
    let email = ErrorEmail::builder(config)
        .context("host", "batch-7")
        .build()
        .unwrap();
    email.install_panic_hook();

    let panicked = std::thread::Builder::new()
        .name("ledger".to_owned())
        .spawn(|| {
            let imbalance = 42;
            panic!("ledger out of balance by {imbalance} cents");
        })
        .unwrap()
        .join();

    assert!(panicked.is_err());
    let mails = server.messages().unwrap();
    assert_eq!(mails.len(), 1, "{}", server.log_text());
    let mail = &mails[0];
    assert_eq!(
        mail.message.subject(),
        Some("[batch-7] panic: ledger out of balance by 42 cents")
    );
    mail.assert_text_contains(&[
        "Location:",
        "tests/panic.rs:",
        "Thread:",
        "ledger",
        "== Backtrace ==",
    ]);
}
