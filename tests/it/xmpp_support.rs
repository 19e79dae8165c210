//! A private Prosody per test (tests/xmpp/prosody.sh, stopped on drop) and a watcher: an
//! independent XMPP client that joins a room and collects the message bodies it sees.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio_xmpp::connect::DnsConfig;
use tokio_xmpp::jid::BareJid;
use tokio_xmpp::parsers::message::MessageType;
use tokio_xmpp::parsers::muc::Muc;
use tokio_xmpp::parsers::muc::muc::History;
use tokio_xmpp::parsers::presence::Presence;
use tokio_xmpp::parsers::stanza::Stanza;
use tokio_xmpp::xmlstream::Timeouts;
use tokio_xmpp::{Client, Event};

use crate::support::*;

/// How long a copy of a message that arrived is waited for.
const SETTLE: Duration = Duration::from_secs(1);

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/xmpp/prosody.sh");
/// The virtual host of the test Prosody.
pub const HOST: &str = "xmpp.test";
/// Its chat rooms' service.
pub const ROOMS: &str = "conference.xmpp.test";

/// A running Prosody with the accounts `bot` and `watcher` (passwords as the names).
pub struct Prosody {
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Prosody {
    pub fn start() -> Prosody {
        Prosody::start_on(free_port())
    }

    /// Started on `port` (one a client was given before the server ran).
    pub fn start_on(port: u16) -> Prosody {
        let dir = tempfile::Builder::new()
            .prefix("swiftdrop-prosody")
            .tempdir_in("/tmp")
            .unwrap();
        let prosody = Prosody { port, dir };
        prosody.run(&[
            "start",
            &prosody.path(),
            &port.to_string(),
            "bot:bot",
            "watcher:watcher",
        ]);
        prosody
    }

    fn path(&self) -> String {
        self.dir.path().display().to_string()
    }

    fn run(&self, args: &[&str]) {
        let status = Command::new("bash")
            .arg(SCRIPT)
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "prosody.sh {args:?}");
    }

    /// Stops it and starts it again on the same port, with the same data.
    pub fn restart(&self) {
        self.restart_after(Duration::ZERO);
    }

    /// Stops it, waits `down`, and starts it again on the same port, with the same data.
    pub fn restart_after(&self, down: Duration) {
        self.stop();
        std::thread::sleep(down);
        self.start_again();
    }

    /// Stops it (its data kept).
    pub fn stop(&self) {
        self.run(&["stop", &self.path()]);
    }

    /// Starts it again after [`Prosody::stop`], on the same port, with the same data.
    pub fn start_again(&self) {
        self.run(&["start", &self.path(), &self.port.to_string()]);
    }
}

/// The `xmpp:` section of a rules file for the bot account of a Prosody on `port`.
pub fn rules_account(port: u16, timeout: &str) -> String {
    format!(
        "xmpp:\n  jabberid: bot@{HOST}\n  password: bot\n  server: 127.0.0.1:{port}\n  tls: false\n  nick: swiftdrop\n  timeout: {timeout}\n"
    )
}

impl Drop for Prosody {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(SCRIPT)
            .args(["stop", &self.path()])
            .status();
    }
}

/// A client in a room (and reachable directly as `watcher@xmpp.test`) that records the
/// bodies of the messages it receives, rejoining after a reconnect (asking then for the
/// room's history, which a restarted server began again: what the room had while it was
/// away; chat messages sent meanwhile the server keeps offline for it).
pub struct Watcher {
    pub bodies: Arc<Mutex<Vec<String>>>,
    /// The bodies of the direct (`chat`) messages among them.
    pub direct: Arc<Mutex<Vec<String>>>,
    /// Times it joined the room (once per session).
    pub joins: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    /// Connects as `watcher` and joins `room` (a local part on [`ROOMS`]); returns once it is
    /// in the room. A client that has not joined within 8 s is replaced: tokio-xmpp 6 can
    /// lose the wake-up of its event reader when a stanza comes in while one is being sent
    /// (its `StanzaReceiver` returns `Pending` on a busy lock without a waker), and then
    /// never reads again.
    pub async fn join(prosody: &Prosody, room: &str) -> Watcher {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let direct = Arc::new(Mutex::new(Vec::new()));
        let joins = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for attempt in 1..=3 {
            let (joined_tx, joined_rx) = tokio::sync::oneshot::channel();
            let task = Self::spawn(prosody, room, &bodies, &direct, &joins, joined_tx);
            match tokio::time::timeout(Duration::from_secs(8), joined_rx).await {
                Ok(Ok(())) => {
                    return Watcher {
                        bodies,
                        direct,
                        joins,
                        task,
                    };
                }
                _ => {
                    task.abort();
                    eprintln!(
                        "watcher: not in the room after 8 s (attempt {attempt}); connecting again"
                    );
                }
            }
        }
        panic!("the watcher never joined the room");
    }

    /// The watcher's client task; `joined_tx` is told when it is in the room.
    fn spawn(
        prosody: &Prosody,
        room: &str,
        bodies: &Arc<Mutex<Vec<String>>>,
        direct: &Arc<Mutex<Vec<String>>>,
        joins: &Arc<std::sync::atomic::AtomicUsize>,
        joined_tx: tokio::sync::oneshot::Sender<()>,
    ) -> tokio::task::JoinHandle<()> {
        let jid = BareJid::new(&format!("watcher@{HOST}")).unwrap();
        let mut client = Client::new_plaintext(
            jid,
            "watcher",
            DnsConfig::addr(&format!("127.0.0.1:{}", prosody.port)),
            Timeouts::tight(),
        );
        let room = BareJid::new(&format!("{room}@{ROOMS}")).unwrap();
        let collected = bodies.clone();
        let collected_direct = direct.clone();
        let counted = joins.clone();
        tokio::spawn(async move {
            let mut joined_tx = Some(joined_tx);
            let mut sessions = 0;
            let mut seen_ids = std::collections::HashSet::new();
            while let Some(event) = client.next().await {
                match event {
                    Event::Online { .. } => {
                        sessions += 1;
                        // Available, so that messages to the bare address reach it.
                        client
                            .send_stanza(Presence::available().into())
                            .await
                            .unwrap();
                        // After a reconnect, what the room had while it was away (the
                        // room's history starts again with the server).
                        let history = if sessions == 1 { 0 } else { 200 };
                        let presence = Presence::available()
                            .with_to(room.with_resource_str("watcher").unwrap())
                            .with_payload(
                                Muc::new().with_history(History::new().with_maxstanzas(history)),
                            );
                        client.send_stanza(presence.into()).await.unwrap();
                    }
                    Event::Stanza(Stanza::Presence(p))
                        if p.from.as_ref().map(|f| f.to_bare()).as_ref() == Some(&room) =>
                    {
                        if p.payloads
                            .iter()
                            .any(|x| x.children().any(|s| s.attr("code") == Some("110")))
                        {
                            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        if let Some(tx) = joined_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Event::Stanza(Stanza::Message(m)) => {
                        // The room's history repeats (with a delay) what it had seen.
                        let replayed = m.payloads.iter().any(|p| p.name() == "delay");
                        let id = m.id.as_ref().map(|i| i.0.clone()).unwrap_or_default();
                        if replayed && !seen_ids.insert(id) {
                            continue;
                        }
                        if let Some(body) = m.bodies.values().next() {
                            if let Some(id) = &m.id {
                                seen_ids.insert(id.0.clone());
                            }
                            collected.lock().unwrap().push(body.clone());
                            if m.type_ == MessageType::Chat {
                                collected_direct.lock().unwrap().push(body.clone());
                            }
                        }
                    }
                    _ => {}
                }
            }
        })
    }

    /// Waits until a body containing `text` arrived, then a while for copies of it; how
    /// many such bodies there are.
    pub async fn wait_for(&self, text: &str) -> usize {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if self.count(text) > 0 {
                tokio::time::sleep(SETTLE).await;
                return self.count(text);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the watcher never saw {text:?}; it saw {:?}",
                self.bodies.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until it joined the room `n` times (after reconnects).
    pub async fn wait_for_joins(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + PATIENCE * 2;
        while self.joins.load(std::sync::atomic::Ordering::SeqCst) < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the watcher did not rejoin"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn count(&self, text: &str) -> usize {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .filter(|b| b.contains(text))
            .count()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}
