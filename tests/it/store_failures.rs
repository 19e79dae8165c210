//! A store that fails, fills up, turns read-only or hangs: the client gets 451 4.3.0 and
//! nothing appears under cur/.

use std::sync::Arc;
use std::time::Duration;

use crate::support::*;

const PEER: &str = "127.0.0.1:40001";

async fn send_one(d: &mut Dialog, body: &str) -> String {
    d.command("MAIL FROM:<a@example.org>", "250").await;
    d.command("RCPT TO:<b@example.com>", "250").await;
    d.command("DATA", "354").await;
    d.send(format!("{body}\r\n.\r\n")).await;
    d.reply().await
}

#[tokio::test]
async fn unwritable_cur_gives_451_then_recovers() {
    let setup = Setup::default_catch_all();
    let mut d = Dialog::start(&setup, PEER).await;
    d.command("EHLO client.test", "250").await;
    let cur = setup.path("maildir/cur");
    std::fs::remove_dir(&cur).unwrap();
    std::fs::write(&cur, b"a file where the folder should be").unwrap();
    let reply = send_one(&mut d, "Subject: one").await;
    assert!(reply.starts_with("451 4.3.0"), "{reply}");
    assert_eq!(count_entries(&setup.path("maildir/tmp")), 0);
    // The store is repaired: the next message on the same connection is stored.
    std::fs::remove_file(&cur).unwrap();
    std::fs::create_dir(&cur).unwrap();
    let reply = send_one(&mut d, "Subject: two").await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    assert_eq!(setup.cur("maildir").len(), 1);
}

#[tokio::test]
async fn full_disk_gives_451_and_leaves_no_partial_file() {
    let setup = Setup::default_catch_all();
    let root = setup.path("maildir");
    let _mount = Mount::new(&["-t", "tmpfs", "-o", "size=64k", "tmpfs"], &root);
    let mut d = Dialog::start(&setup, PEER).await;
    d.command("EHLO client.test", "250").await;
    let big = "x".repeat(998);
    let body = vec![big.as_str(); 300].join("\r\n");
    let reply = send_one(&mut d, &body).await;
    assert!(reply.starts_with("451 4.3.0"), "{reply}");
    assert!(setup.cur("maildir").is_empty());
    assert_eq!(count_entries(&root.join("tmp")), 0, "staged file removed");
    // Small mail still fits.
    let reply = send_one(&mut d, "Subject: small").await;
    assert!(reply.starts_with("250"), "{reply}");
}

#[tokio::test]
async fn read_only_store_gives_451() {
    let setup = Setup::default_catch_all();
    let root = setup.path("maildir");
    let dests = setup.destinations(); // creates tmp/new/cur before the mount
    let mount = Mount::new(&["--bind", root.to_str().unwrap()], &root);
    mount.remount("remount,bind,ro");
    let mut d = Dialog::start_with(
        setup.settings(),
        Arc::new(setup.deliverer_with(dests)),
        PEER,
    )
    .await;
    d.command("EHLO client.test", "250").await;
    let reply = send_one(&mut d, "Subject: ro").await;
    assert!(reply.starts_with("451 4.3.0"), "{reply}");
    assert!(setup.cur("maildir").is_empty());
}

#[tokio::test]
async fn hanging_store_gives_451_at_the_deadline_and_writes_nothing() {
    let setup = Setup::new(&[("SWIFTDROP_SERVER_STORE_TIMEOUT", "300ms")]);
    let real = setup.destinations().remove(0);
    let inner = real.store.clone();
    let hanging = real.with_store(Arc::new(HangingStore {
        inner,
        delay: Duration::from_secs(2),
    }));
    let deliverer = Arc::new(setup.deliverer_with(vec![hanging]));
    let mut d = Dialog::start_with(setup.settings(), deliverer, PEER).await;
    d.command("EHLO client.test", "250").await;
    let reply = send_one(&mut d, "Subject: slow").await;
    assert_eq!(reply, "451 4.3.0 Error: store timed out, try again later");
    // Even after the store would have finished, nothing shows up.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(setup.cur("maildir").is_empty());
}

#[tokio::test]
async fn one_failing_destination_rolls_back_the_others() {
    let setup = Setup::new(&[
        ("SWIFTDROP_GOOD_RECIPIENTS", "good@example.com"),
        ("SWIFTDROP_GOOD_PATH", "{dir}/good"),
        ("SWIFTDROP_BAD_RECIPIENTS", "bad@example.com"),
        ("SWIFTDROP_BAD_PATH", "{dir}/bad"),
    ]);
    let deliverer = setup.deliverer();
    let bad_cur = setup.path("bad/cur");
    std::fs::remove_dir(&bad_cur).unwrap();
    std::fs::write(&bad_cur, b"").unwrap();
    let mut d = Dialog::start_with(setup.settings(), deliverer, PEER).await;
    d.envelope("a@example.org", &["good@example.com", "bad@example.com"])
        .await;
    d.command("DATA", "354").await;
    d.send("Subject: half\r\n\r\n.\r\n").await;
    let reply = d.reply().await;
    assert!(reply.starts_with("451 4.3.0"), "{reply}");
    assert!(
        setup.cur("good").is_empty(),
        "the good copy was rolled back"
    );
}
