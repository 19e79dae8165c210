//! The XMPP sink: one long-lived client connection (tokio-xmpp) owned by one task, which
//! posts one message at a time:
//!
//! - it waits for the session (`Online`) within the account's `timeout` (default
//!   [`XmppSettings::DEFAULT_TIMEOUT`]): a server that does not
//!   answer makes the action fail for now, it never hangs the worker;
//! - it joins a room before posting to it (waiting for the room's presence with status
//!   110), and again after every new session, since a reconnect loses room membership; a
//!   room the join would create (status 201) does not exist: a permanent failure, and the
//!   room is left again;
//! - a message counts as delivered only when the server has it: for a room, the room's
//!   echo of it (same id), or the server's XEP-0198 ack followed by [`ERROR_WINDOW`] without
//!   an error; for a user, the ack (or, without stream management, the window);
//! - an error reply to it (not in the room, kicked) leads to a rejoin and one resend; one
//!   of type `wait` (a rate limit, a busy server) is a failure for now; any other (a room
//!   or user that does not exist) is a permanent failure;
//! - a session that ends while it waits: sent again on the next one; a session that is
//!   resumed (XEP-0198) keeps its rooms, and tokio-xmpp itself sends what was not acked;
//! - a post that runs out of time drops the connection, so that it cannot go out later
//!   while the message waits in `retry/` (at worst the server had it: a repeat);
//! - text that XML cannot carry (control characters) is left out, and bodies are cut at
//!   [`MAX_BODY`] bytes (servers close the stream on large stanzas).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, timeout_at};
use tokio_xmpp::connect::DnsConfig;
use tokio_xmpp::jid::{BareJid, Jid};
use tokio_xmpp::parsers::disco::{DiscoInfoQuery, DiscoInfoResult};
use tokio_xmpp::parsers::iq::Iq;
use tokio_xmpp::parsers::message::{Id, Lang, Message, MessageType};
use tokio_xmpp::parsers::muc::Muc;
use tokio_xmpp::parsers::muc::muc::History;
use tokio_xmpp::parsers::ns;
use tokio_xmpp::parsers::presence::{Presence, Type as PresenceType};
use tokio_xmpp::parsers::stanza::Stanza;
use tokio_xmpp::parsers::stanza_error::ErrorType;
use tokio_xmpp::stanzastream::{StanzaStage, StanzaState, StanzaToken};
use tokio_xmpp::xmlstream::Timeouts;
use tokio_xmpp::{Client, Event};

use super::SinkError;
use crate::worker::rules::XmppSettings;

/// How long after the server's ack an error reply is still waited for.
pub const ERROR_WINDOW: Duration = Duration::from_secs(2);
/// The longest message body sent (Prosody closes the stream at 256 KiB per stanza).
pub const MAX_BODY: usize = 64 * 1024;

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A multi-user chat room (`groupchat`).
    Room(BareJid),
    /// One user (`chat`).
    User(BareJid),
    /// A room or a user, as the server of its domain says (disco#info: a `conference`
    /// identity is a chat-room service).
    Ask(BareJid),
}

impl Target {
    /// A room (`Some(true)`), a user (`Some(false)`) or either (`None`: asked of the
    /// server) from its address.
    pub fn parse(address: &str, room: Option<bool>) -> Result<Target, SinkError> {
        let jid = BareJid::new(address).map_err(|e| {
            SinkError::Permanent(format!("{address:?} is not an XMPP address: {e}"))
        })?;
        Ok(match room {
            Some(true) => Target::Room(jid),
            Some(false) => Target::User(jid),
            None => Target::Ask(jid),
        })
    }
}

struct Post {
    to: Target,
    body: String,
    done: oneshot::Sender<Result<(), SinkError>>,
}

/// A handle on the connection task; cheap to clone. The task ends (and logs off) when the
/// last handle is dropped.
#[derive(Debug, Clone)]
pub struct XmppSink {
    posts: mpsc::Sender<Post>,
}

impl XmppSink {
    /// Starts the connection task for `settings` (within a Tokio runtime).
    pub fn start(settings: &XmppSettings) -> Result<XmppSink, String> {
        crate::store::install_tls_provider();
        BareJid::new(&settings.jabberid)
            .map_err(|e| format!("xmpp jabberid {:?}: {e}", settings.jabberid))?;
        let (posts, requests) = mpsc::channel(64);
        let connection = Connection {
            client: new_client(settings),
            settings: settings.clone(),
            online: false,
            acks: false,
            joined: HashSet::new(),
            services: HashMap::new(),
            nick: settings.nick.clone(),
            sent: 0,
            timeout: settings.timeout,
        };
        tokio::spawn(connection.run(requests));
        Ok(XmppSink { posts })
    }

    /// Posts `body` to `to`; `Ok` once the server has it.
    pub async fn post(&self, to: Target, body: String) -> Result<(), SinkError> {
        let (done, result) = oneshot::channel();
        let gone = || SinkError::Transient("the XMPP connection task has ended".into());
        self.posts
            .send(Post { to, body, done })
            .await
            .map_err(|_| gone())?;
        result.await.map_err(|_| gone())?
    }
}

/// A client for the account (it connects, and reconnects, by itself).
fn new_client(settings: &XmppSettings) -> Client {
    let jid = BareJid::new(&settings.jabberid).expect("checked by XmppSink::start");
    let password = settings.password.expose().to_string();
    let dns = match &settings.server {
        Some(server) => DnsConfig::addr(server),
        // As clients do: the domain's _xmpp-client._tcp SRV record, else port 5222.
        None => DnsConfig::srv_default_client(jid.domain().as_str()),
    };
    if settings.tls {
        Client::new_starttls(jid, password, dns, Timeouts::tight())
    } else {
        Client::new_plaintext(jid, password, dns, Timeouts::tight())
    }
}

/// The connection task's state.
struct Connection {
    client: Client,
    settings: XmppSettings,
    online: bool,
    /// The session acknowledges stanzas (XEP-0198).
    acks: bool,
    /// Rooms joined in this session.
    joined: HashSet<BareJid>,
    /// Whether each domain asked is a chat-room service (disco#info).
    services: HashMap<String, bool>,
    nick: String,
    /// Messages sent, for their ids.
    sent: u64,
    /// How long one post may take.
    timeout: Duration,
}

/// What waiting for a stanza ended with.
enum Waited {
    Delivered,
    /// A new session began: room membership and unacked messages are lost.
    Reconnected,
    /// An error reply: not in the room (rejoin and resend), worth another attempt later
    /// (type `wait`), or anything else.
    Refused {
        rejoin: bool,
        wait: bool,
        why: String,
    },
}

impl Connection {
    async fn run(mut self, mut requests: mpsc::Receiver<Post>) {
        loop {
            tokio::select! {
                post = requests.recv() => {
                    let Some(post) = post else { break };
                    let deadline = Instant::now() + self.timeout;
                    let result = match timeout_at(deadline, self.deliver(&post.to, &post.body, deadline)).await {
                        Ok(result) => result,
                        Err(_) => {
                            self.drop_connection().await;
                            Err(SinkError::Transient("no confirmation from the XMPP server in time".into()))
                        }
                    };
                    let _ = post.done.send(result);
                }
                event = self.client.next() => match event {
                    Some(event) => {
                        self.on_event(event);
                    }
                    None => break,
                },
            }
        }
        let _ = self.client.send_end().await;
    }

    /// Replaces the client, dropping what it still had queued (a post that ran out of
    /// time must not go out later); the next post connects again.
    async fn drop_connection(&mut self) {
        let old = std::mem::replace(&mut self.client, new_client(&self.settings));
        self.online = false;
        self.joined.clear();
        tokio::spawn(async move {
            let _ = old.send_end().await;
        });
        tracing::warn!("XMPP: a post ran out of time; connecting again");
    }

    /// Keeps the session state; true for a new session (not for a resumed one, which
    /// keeps its rooms).
    fn on_event(&mut self, event: Event) -> bool {
        match event {
            Event::Online { resumed: true, .. } => {
                self.online = true;
                tracing::info!("XMPP session resumed");
                false
            }
            Event::Online { features, .. } => {
                self.online = true;
                self.acks = features.stream_management.is_some();
                self.joined.clear();
                tracing::info!(acks = self.acks, "XMPP session started");
                true
            }
            Event::Disconnected(e) => {
                self.online = false;
                tracing::warn!(error = %e, "XMPP connection lost");
                false
            }
            Event::Stanza(_) => false,
        }
    }

    async fn next_event(&mut self) -> Result<Event, SinkError> {
        self.client
            .next()
            .await
            .ok_or_else(|| SinkError::Transient("the XMPP client has stopped".into()))
    }

    async fn deliver(
        &mut self,
        to: &Target,
        body: &str,
        deadline: Instant,
    ) -> Result<(), SinkError> {
        let mut resent = false;
        loop {
            while !self.online {
                let event = self.next_event().await?;
                self.on_event(event);
            }
            let asked;
            let to = match to {
                Target::Ask(jid) => {
                    asked = if self.is_room(jid).await? {
                        Target::Room(jid.clone())
                    } else {
                        Target::User(jid.clone())
                    };
                    &asked
                }
                to => to,
            };
            if let Target::Room(room) = to {
                if !self.joined.contains(room) {
                    self.join(room).await?;
                }
            }
            match self.send_and_wait(to, body, deadline).await? {
                Waited::Delivered => return Ok(()),
                Waited::Reconnected => continue,
                Waited::Refused {
                    wait: true, why, ..
                } => return Err(SinkError::Transient(why)),
                Waited::Refused {
                    rejoin: true, why, ..
                } if !resent => {
                    tracing::info!(%why, "XMPP: posting again after a rejoin");
                    if let Target::Room(room) = to {
                        self.joined.remove(room);
                    }
                    resent = true;
                }
                Waited::Refused { why, .. } => return Err(SinkError::Permanent(why)),
            }
        }
    }

    /// Whether `jid`'s domain is a chat-room service: its disco#info lists a `conference`
    /// identity (asked once per domain and session's connection). An error reply means a
    /// user's server; one of type `wait` fails the post for now.
    async fn is_room(&mut self, jid: &BareJid) -> Result<bool, SinkError> {
        let domain = jid.domain().to_string();
        if let Some(&known) = self.services.get(&domain) {
            return Ok(known);
        }
        self.sent += 1;
        let id = format!("swiftdrop-disco-{}-{}", std::process::id(), self.sent);
        let service =
            BareJid::new(&domain).map_err(|e| SinkError::Permanent(format!("{domain:?}: {e}")))?;
        let query = Iq::from_get(id.clone(), DiscoInfoQuery { node: None }).with_to(service.into());
        self.client
            .send_stanza(query.into())
            .await
            .map_err(|e| SinkError::Transient(format!("disco#info {domain}: {e}")))?;
        loop {
            let iq = match self.next_event().await? {
                Event::Stanza(Stanza::Iq(iq)) if iq.id() == id => iq,
                other => {
                    if self.on_event(other) {
                        return Err(SinkError::Transient(format!(
                            "disco#info {domain}: reconnected"
                        )));
                    }
                    continue;
                }
            };
            let room = match iq {
                Iq::Result {
                    payload: Some(payload),
                    ..
                } => DiscoInfoResult::try_from(payload)
                    .is_ok_and(|info| info.identities.iter().any(|i| i.category == "conference")),
                Iq::Error { error, .. } if error.type_ == ErrorType::Wait => {
                    return Err(SinkError::Transient(format!(
                        "disco#info {domain}: the server asks to wait"
                    )));
                }
                _ => false,
            };
            tracing::info!(
                domain,
                room,
                "XMPP: asked whether the domain hosts chat rooms"
            );
            self.services.insert(domain, room);
            return Ok(room);
        }
    }

    /// Joins `room`, waiting for its presence with status 110 (our own).
    async fn join(&mut self, room: &BareJid) -> Result<(), SinkError> {
        let occupant = room
            .with_resource_str(&self.nick)
            .map_err(|e| SinkError::Permanent(format!("nick {:?}: {e}", self.nick)))?;
        let presence = Presence::available()
            .with_to(occupant)
            .with_payload(Muc::new().with_history(History::new().with_maxstanzas(0)));
        self.client
            .send_stanza(presence.into())
            .await
            .map_err(|e| SinkError::Transient(format!("join {room}: {e}")))?;
        loop {
            let event = self.next_event().await?;
            let presence = match event {
                Event::Stanza(Stanza::Presence(p)) => p,
                other => {
                    if self.on_event(other) {
                        return Err(SinkError::Transient(format!("join {room}: reconnected")));
                    }
                    continue;
                }
            };
            if presence.from.as_ref().map(|f| f.to_bare()).as_ref() != Some(room) {
                continue;
            }
            if presence.type_ == PresenceType::Error {
                let error = StanzaError::of(&presence.payloads);
                let why = format!("{room} refused the join: {}", error.condition);
                return Err(if error.wait {
                    SinkError::Transient(why)
                } else {
                    SinkError::Permanent(why)
                });
            }
            let codes = own_presence_codes(&presence);
            if codes.contains(&"110".to_string()) {
                if codes.contains(&"201".to_string()) {
                    // Our join made the room: it did not exist. Leave, so it goes again.
                    let leave = Presence::new(PresenceType::Unavailable).with_to(
                        room.with_resource_str(&self.nick)
                            .map_err(|e| SinkError::Permanent(format!("nick: {e}")))?,
                    );
                    let _ = self.client.send_stanza(leave.into()).await;
                    return Err(SinkError::Permanent(format!("no room {room}")));
                }
                self.joined.insert(room.clone());
                return Ok(());
            }
        }
    }

    async fn send_and_wait(
        &mut self,
        to: &Target,
        body: &str,
        deadline: Instant,
    ) -> Result<Waited, SinkError> {
        self.sent += 1;
        let id = Id(format!("swiftdrop-{}-{}", std::process::id(), self.sent));
        let (jid, mut message) = match to {
            Target::Room(room) => (room, Message::groupchat(Jid::from(room.clone()))),
            Target::User(user) | Target::Ask(user) => {
                (user, Message::chat(Jid::from(user.clone())))
            }
        };
        message.id = Some(id.clone());
        message.bodies.insert(Lang::default(), xml_text(body));
        let mut token: StanzaToken = self
            .client
            .send_stanza(message.into())
            .await
            .map_err(|e| SinkError::Transient(format!("send to {jid}: {e}")))?;
        let room = matches!(to, Target::Room(_));
        let mut acked_at: Option<Instant> = None;
        if !self.acks && !room {
            // Without acks, the window after the send stands for them (a room's echo is
            // waited for in any case).
            acked_at = Some(Instant::now());
        }
        let acks = self.acks;
        loop {
            let window_end = acked_at.map(|at| at + ERROR_WINDOW);
            tokio::select! {
                state = token.wait_for(StanzaStage::Acked), if acks && acked_at.is_none() => match state {
                    Some(StanzaState::Acked { .. }) => acked_at = Some(Instant::now()),
                    Some(StanzaState::Failed { .. } | StanzaState::Dropped) | None => {
                        return Ok(Waited::Reconnected);
                    }
                    Some(_) => {}
                },
                _ = tokio::time::sleep_until(window_end.unwrap_or(deadline)), if window_end.is_some() => {
                    return Ok(Waited::Delivered);
                }
                event = self.client.next() => {
                    let event = event.ok_or_else(|| SinkError::Transient("the XMPP client has stopped".into()))?;
                    let reply = match event {
                        Event::Stanza(Stanza::Message(m)) if m.id.as_ref() == Some(&id) => m,
                        other => {
                            if self.on_event(other) {
                                if acked_at.is_some() && self.acks {
                                    // The server had it before the session ended.
                                    return Ok(Waited::Delivered);
                                }
                                return Ok(Waited::Reconnected);
                            }
                            continue;
                        }
                    };
                    match reply.type_ {
                        MessageType::Error => {
                            let error = StanzaError::of(&reply.payloads);
                            let rejoin = room
                                && ["not-acceptable", "forbidden", "not-allowed"]
                                    .contains(&error.condition.as_str());
                            return Ok(Waited::Refused {
                                rejoin,
                                wait: error.wait,
                                why: format!("{jid} answered {}", error.condition),
                            });
                        }
                        // The room's echo: every occupant has it.
                        MessageType::Groupchat if room => return Ok(Waited::Delivered),
                        _ => {}
                    }
                }
            }
        }
    }
}

/// The status codes of a room's presence (110: our own; 201: the room was just made).
fn own_presence_codes(presence: &Presence) -> Vec<String> {
    presence
        .payloads
        .iter()
        .filter(|x| x.is("x", ns::MUC_USER))
        .flat_map(|x| x.children())
        .filter(|s| s.is("status", ns::MUC_USER))
        .filter_map(|s| s.attr("code").map(str::to_string))
        .collect()
}

/// The `<error/>` of an error reply.
struct StanzaError {
    /// Its defined condition (e.g. `item-not-found`).
    condition: String,
    /// Its type is `wait`: retry after waiting.
    wait: bool,
}

impl StanzaError {
    fn of(payloads: &[tokio_xmpp::minidom::Element]) -> StanzaError {
        let error = payloads.iter().find(|p| p.name() == "error");
        StanzaError {
            condition: error
                .and_then(|e| {
                    e.children()
                        .map(|c| c.name().to_string())
                        .find(|n| n != "text")
                })
                .unwrap_or_else(|| "an error".into()),
            wait: error.and_then(|e| e.attr("type")) == Some("wait"),
        }
    }
}

/// `text` as XML can carry it: characters XML 1.0 forbids (controls but tab, line feed
/// and carriage return; U+FFFE, U+FFFF) left out, cut at [`MAX_BODY`] bytes.
fn xml_text(text: &str) -> String {
    let mut out: String = text
        .chars()
        .filter(|&c| {
            matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
        })
        .collect();
    if out.len() > MAX_BODY {
        let mut end = MAX_BODY - '…'.len_utf8();
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_made_fit_for_xml() {
        assert_eq!(
            xml_text("\u{1b}[31mred\u{1b}[0m\tok\r\n\u{7}"),
            "[31mred[0m\tok\r\n"
        );
        let long = xml_text(&"é".repeat(MAX_BODY));
        assert!(long.len() <= MAX_BODY && long.ends_with('…'));
    }
}
