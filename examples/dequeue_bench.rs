//! The measuring half of `bench/dequeue.sh`: a watcher in an XMPP room times the messages
//! it sees.
//!
//! ```text
//! dequeue_bench pipeline --xmpp-port P --smtp-port S --count N
//!     sends N messages to swiftdrop (SMTP), one after another, notes when each got its 250,
//!     and when the watcher saw it in the room (posted there by the dequeue worker)
//! dequeue_bench bare --xmpp-port P --count N
//!     a bare client posts the same N texts to the same room, each after the room echoed the
//!     one before (what the worker's XMPP sink waits for): the ceiling
//! ```
//!
//! Prints one line: `<mode> <count> <seconds> <messages/s> <p50 ms> <p99 ms>` (latency from
//! the 250, or from the post, to the watcher seeing it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use futures::StreamExt;
use tokio_xmpp::connect::DnsConfig;
use tokio_xmpp::jid::{BareJid, Jid};
use tokio_xmpp::parsers::message::{Lang, Message};
use tokio_xmpp::parsers::muc::Muc;
use tokio_xmpp::parsers::muc::muc::History;
use tokio_xmpp::parsers::presence::Presence;
use tokio_xmpp::parsers::stanza::Stanza;
use tokio_xmpp::xmlstream::Timeouts;
use tokio_xmpp::{Client, Event};

#[derive(Parser)]
struct Args {
    #[arg(value_enum)]
    mode: Mode,
    #[arg(long)]
    xmpp_port: u16,
    #[arg(long, default_value_t = 0)]
    smtp_port: u16,
    #[arg(long, default_value_t = 200)]
    count: usize,
    /// The room's local part on conference.xmpp.test.
    #[arg(long, default_value = "bench")]
    room: String,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Mode {
    Pipeline,
    Bare,
}

const HOST: &str = "xmpp.test";

/// A client (account = password = `user`) in the room; each message body's first word
/// `bench-<i>` is noted with the time it arrived.
struct InRoom {
    client: Client,
    room: BareJid,
}

impl InRoom {
    /// Joins `room` as `user`, with a new client when one is not in within 10 s (tokio-xmpp
    /// 6 can lose its reader's wake-up while a stanza is being sent).
    async fn join(port: u16, user: &str, room: &str) -> InRoom {
        for _ in 0..3 {
            if let Ok(joined) =
                tokio::time::timeout(Duration::from_secs(10), Self::try_join(port, user, room))
                    .await
            {
                return joined;
            }
            eprintln!("{user}: not in the room after 10 s; connecting again");
        }
        panic!("{user}: not in the room");
    }

    async fn try_join(port: u16, user: &str, room: &str) -> InRoom {
        tokio_xmpp::rustls::crypto::ring::default_provider()
            .install_default()
            .ok();
        let mut client = Client::new_plaintext(
            BareJid::new(&format!("{user}@{HOST}")).unwrap(),
            user.to_string(),
            DnsConfig::addr(&format!("127.0.0.1:{port}")),
            Timeouts::tight(),
        );
        let room = BareJid::new(&format!("{room}@conference.{HOST}")).unwrap();
        loop {
            match client.next().await {
                Some(Event::Online { .. }) => break,
                Some(_) => {}
                None => panic!("{user}: the client stopped"),
            }
        }
        let presence = Presence::available()
            .with_to(room.with_resource_str(user).unwrap())
            .with_payload(Muc::new().with_history(History::new().with_maxstanzas(0)));
        client.send_stanza(presence.into()).await.unwrap();
        loop {
            match client.next().await {
                Some(Event::Stanza(Stanza::Presence(p)))
                    if p.from.as_ref().map(|f| f.to_bare()).as_ref() == Some(&room) =>
                {
                    break;
                }
                Some(_) => {}
                None => panic!("{user}: the client stopped"),
            }
        }
        InRoom { client, room }
    }

    /// The `bench-<i>` numbers of the room messages in the next event, if any.
    async fn next_seen(&mut self) -> Option<usize> {
        match self.client.next().await? {
            Event::Stanza(Stanza::Message(m)) => m
                .bodies
                .values()
                .next()
                .and_then(|b| Some(&b[b.find("bench-")? + "bench-".len()..]))
                .and_then(|n| {
                    let digits = n.find(|c: char| !c.is_ascii_digit()).unwrap_or(n.len());
                    n[..digits].parse().ok()
                }),
            _ => None,
        }
    }
}

fn percentile(sorted: &[f64], p: usize) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let mut watcher = InRoom::join(args.xmpp_port, "watcher", &args.room).await;
    let seen: Arc<Mutex<HashMap<usize, Instant>>> = Arc::default();
    let start: Arc<Mutex<HashMap<usize, Instant>>> = Arc::default();
    let count = args.count;
    let noted = seen.clone();
    let watching = tokio::spawn(async move {
        while noted.lock().unwrap().len() < count {
            if let Some(i) = watcher.next_seen().await {
                noted.lock().unwrap().entry(i).or_insert_with(Instant::now);
            }
        }
    });
    let began = Instant::now();
    match args.mode {
        Mode::Bare => {
            let mut bare = InRoom::join(args.xmpp_port, "bare", &args.room).await;
            for i in 0..count {
                let mut message = Message::groupchat(Jid::from(bare.room.clone()));
                message.bodies.insert(
                    Lang::default(),
                    format!("[bench-{i}] bench@example.org: a monitoring alert body"),
                );
                start.lock().unwrap().insert(i, Instant::now());
                bare.client.send_stanza(message.into()).await.unwrap();
                // The room's echo of it, as the worker's sink waits for.
                while bare.next_seen().await != Some(i) {}
            }
        }
        Mode::Pipeline => {
            let mut smtp = mail_send::SmtpClientBuilder::new("127.0.0.1", args.smtp_port)
                .unwrap()
                .implicit_tls(false)
                .connect_plain()
                .await
                .unwrap();
            for i in 0..count {
                let body = format!(
                    "From: bench@example.org\r\nTo: ops@example.com\r\nSubject: bench-{i}\r\nMessage-ID: <{i}.{}@bench>\r\n\r\na monitoring alert body\r\n",
                    std::process::id()
                );
                smtp.send(mail_send::smtp::message::Message::new(
                    "bench@example.org",
                    ["ops@example.com"],
                    body.as_bytes(),
                ))
                .await
                .unwrap();
                start.lock().unwrap().insert(i, Instant::now());
            }
        }
    }
    tokio::time::timeout(Duration::from_secs(300), watching)
        .await
        .expect("the watcher saw every message")
        .unwrap();
    let seen = seen.lock().unwrap();
    let start = start.lock().unwrap();
    let last = seen.values().max().copied().unwrap_or(began);
    let seconds = last.duration_since(began).as_secs_f64();
    let mut latencies: Vec<f64> = (0..count)
        .filter_map(|i| Some(seen.get(&i)?.saturating_duration_since(*start.get(&i)?)))
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let mode = if args.mode == Mode::Bare {
        "bare"
    } else {
        "pipeline"
    };
    println!(
        "{mode} {count} {seconds:.2} {:.1} {:.0} {:.0}",
        count as f64 / seconds,
        percentile(&latencies, 50),
        percentile(&latencies, 99)
    );
}
