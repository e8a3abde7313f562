//! Checks shared by the test binaries.

use testbed::smtp::{ReceivedMail, SmtpServer};

/// The one mail the server received; fails, showing the server's log, otherwise.
pub fn only_mail(server: &SmtpServer) -> ReceivedMail {
    let mut mails = server.messages().unwrap_or_default();
    assert_eq!(mails.len(), 1, "server log:\n{}", server.log_text());
    mails.remove(0)
}

/// Asserts what 100 failures of one kind in a row must produce, in whatever order
/// the mails arrived: at most 8 mails, sent at the 1st, 2nd, 4th ... 64th failure,
/// each occurrence reported once (the `X-ErrorEmail-Count` header says how many
/// failures a mail stands for), and the mail of the 64th saying so to its reader.
pub fn assert_crash_loop_of_100_mails(mails: &[ReceivedMail]) {
    assert!(mails.len() <= 8, "{} mails", mails.len());
    let stands_for = |mail: &ReceivedMail| -> u64 {
        let header = mail.raw_header("X-ErrorEmail-Count").unwrap_or_default();
        header
            .parse()
            .unwrap_or_else(|_| panic!("X-ErrorEmail-Count: {header:?}"))
    };
    let mut counts: Vec<u64> = mails.iter().map(stands_for).collect();
    counts.sort();
    assert_eq!(counts, [1, 1, 2, 4, 8, 16, 32]);
    let Some(last) = mails.iter().find(|mail| stands_for(mail) == 32) else {
        panic!("no mail stands for the 33rd to 64th failures");
    };
    let subject = last.message.subject().unwrap_or_default();
    assert!(subject.contains(" (64th failure in "), "{subject}");
    last.assert_text_contains(&[
        "Failure 64 of this kind since ",
        "This mail also reports 31 earlier failures that were not mailed.",
        "The next mail goes out at failure 128",
    ]);
}
