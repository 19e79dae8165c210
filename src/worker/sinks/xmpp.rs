//! The XMPP sink: one long-lived client connection (tokio-xmpp) owned by one task, which
//! posts one message at a time:
//!
//! - it waits for the session (`Online`) within the account's `timeout` (default
//!   [`XmppSettings::DEFAULT_TIMEOUT`]): a server that does not answer makes the action
//!   fail for now, it never hangs the worker; a login the server refuses fails it for good
//!   (tokio-xmpp retries it forever and says so only in its log: [`crate::util::log_bridge`]);
//! - an address without `?join`/`?message` is a room when its domain's disco#info lists a
//!   `conference` identity, else a user (asked once per domain);
//! - it joins a room before posting to it (waiting for the room's presence with status
//!   110), and again after every new session, since a reconnect loses room membership; a
//!   room the join would create (status 201) does not exist: a permanent failure, and the
//!   room is destroyed and left again;
//! - a message counts as delivered only on proof: for a room, the room's echo of it (same
//!   id); for a user, the server's XEP-0198 ack, or without stream management the answer to
//!   a ping sent after it (the server answers in order), and for a user who has not taken a
//!   message yet no error reply within [`ERROR_WINDOW`] after that (Prosody answers for an
//!   unknown account after its ack); an error reply that comes later is logged, not dropped;
//! - an error reply to it (not in the room, kicked) leads to a rejoin and one resend; one
//!   of type `wait` (a rate limit, a busy server) is a failure for now; any other (a room
//!   or user that does not exist) is a permanent failure;
//! - a session that ends while it waits: a message still queued goes out on the next
//!   session (tokio-xmpp sends it; it is not sent twice); one sent but not acked was lost
//!   with the session and is sent again (at worst the server had it: a repeat); a session
//!   that is resumed (XEP-0198) keeps its rooms, and tokio-xmpp itself sends what was not
//!   acked;
//! - a post that runs out of time drops the connection and starts a new one; the old
//!   client is closed, but one still reconnecting flushes what it had queued once it
//!   connects (tokio-xmpp has no way to drop its queue), so a post that timed out during an
//!   outage can still arrive, and again from the retry: a repeat;
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
use tokio_xmpp::parsers::ping::Ping;
use tokio_xmpp::parsers::presence::{Presence, Type as PresenceType};
use tokio_xmpp::parsers::stanza::Stanza;
use tokio_xmpp::parsers::stanza_error::ErrorType;
use tokio_xmpp::stanzastream::{StanzaStage, StanzaState, StanzaToken};
use tokio_xmpp::xmlstream::Timeouts;
use tokio_xmpp::{Client, Event};

use super::SinkError;
use crate::worker::rules::XmppSettings;

/// How long after the proof that the server has a message to a user not known yet an error
/// reply is still waited for (Prosody answers for an unknown account after its ack).
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
    /// The post's time limit, from when it was asked for (time waiting behind other posts
    /// counts).
    deadline: Instant,
    done: oneshot::Sender<Result<(), SinkError>>,
}

/// A handle on the connection task; cheap to clone. The task ends (and logs off) when the
/// last handle is dropped.
#[derive(Debug, Clone)]
pub struct XmppSink {
    posts: mpsc::Sender<Post>,
    /// How long one post may take.
    timeout: Duration,
}

impl XmppSink {
    /// Starts the connection task for `settings` (within a Tokio runtime).
    pub fn start(settings: &XmppSettings) -> Result<XmppSink, String> {
        crate::store::install_tls_provider();
        crate::util::log_bridge::install();
        account(settings)?;
        let (posts, requests) = mpsc::channel(64);
        let connection = Connection {
            client: new_client(settings),
            settings: settings.clone(),
            online: false,
            acks: false,
            joined: HashSet::new(),
            services: HashMap::new(),
            known_users: HashSet::new(),
            handed: false,
            nick: settings.nick.clone(),
        };
        tokio::spawn(connection.run(requests));
        Ok(XmppSink {
            posts,
            timeout: settings.timeout,
        })
    }

    /// Posts `body` to `to`; `Ok` once the server has it.
    pub async fn post(&self, to: Target, body: String) -> Result<(), SinkError> {
        let (done, result) = oneshot::channel();
        let gone = || SinkError::Transient("the XMPP connection task has ended".into());
        let deadline = Instant::now() + self.timeout;
        self.posts
            .send(Post {
                to,
                body,
                deadline,
                done,
            })
            .await
            .map_err(|_| gone())?;
        result.await.map_err(|_| gone())?
    }
}

/// The account's bare JID (a resource in `jabberid`, as milter-xmpp allows, is left out:
/// the server gives one).
fn account(settings: &XmppSettings) -> Result<BareJid, String> {
    Jid::new(&settings.jabberid)
        .map(|jid| jid.to_bare())
        .map_err(|e| format!("xmpp jabberid {:?}: {e}", settings.jabberid))
}

/// A client for the account (it connects, and reconnects, by itself).
fn new_client(settings: &XmppSettings) -> Client {
    let jid = account(settings).expect("checked by XmppSink::start");
    let password = settings.password.expose().to_string();
    let dns = match &settings.server {
        // An IP address and port as it is; a host name and port resolved (no SRV).
        Some(server) if server.parse::<std::net::SocketAddr>().is_ok() => DnsConfig::addr(server),
        Some(server) => {
            let (host, port) = server
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse().ok()?)))
                .unwrap_or((server.as_str(), 5222));
            DnsConfig::no_srv(host, port)
        }
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
    /// Users who took a message without an error reply within [`ERROR_WINDOW`].
    known_users: HashSet<BareJid>,
    /// The post in hand gave the client a stanza (which would go out even after the post
    /// gave up).
    handed: bool,
    nick: String,
}

/// What waiting for a stanza ended with.
enum Waited {
    Delivered,
    /// A new session began: room membership is lost, and a message sent but not acked
    /// (`queued`: false); one still queued goes out on the new session.
    Reconnected {
        queued: bool,
    },
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
                    if Instant::now() >= post.deadline {
                        // Its time ran out behind other posts: not sent at all.
                        let _ = post.done.send(Err(SinkError::Transient("no turn on the XMPP connection in time".into())));
                        continue;
                    }
                    self.handed = false;
                    let result = match timeout_at(post.deadline, self.deliver(&post.to, &post.body)).await {
                        Ok(result) => result,
                        Err(_) => {
                            // A stanza handed to the client would go out later: the client goes.
                            if self.handed {
                                self.drop_connection("a post ran out of time").await;
                            }
                            Err(SinkError::Transient("no confirmation from the XMPP server in time".into()))
                        }
                    };
                    let _ = post.done.send(result);
                }
                event = self.client.next() => match event {
                    Some(event) => {
                        self.on_event(event);
                    }
                    // tokio-xmpp's stream worker ended (it should not): a new client (the
                    // old one is dropped: its send_end would panic on the ended worker).
                    None => {
                        self.client = new_client(&self.settings);
                        self.online = false;
                        self.joined.clear();
                        tracing::warn!("XMPP: the client's stream worker ended; connecting again");
                    }
                },
            }
        }
        let _ = self.client.send_end().await;
    }

    /// Replaces the client, dropping what it still had queued (a post that ran out of
    /// time must not go out later); the next post connects again.
    async fn drop_connection(&mut self, why: &str) {
        let old = std::mem::replace(&mut self.client, new_client(&self.settings));
        self.online = false;
        self.joined.clear();
        tokio::spawn(async move {
            let _ = old.send_end().await;
        });
        tracing::warn!("XMPP: {why}; connecting again");
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
            Event::Stanza(Stanza::Message(m)) if m.type_ == MessageType::Error => {
                // The error of a message that counted as delivered (or ran out of time):
                // said, not dropped.
                let error = StanzaError::of(&m.payloads);
                tracing::warn!(
                    id = m.id.as_ref().map(|i| i.0.as_str()).unwrap_or("-"),
                    from = m.from.as_ref().map(ToString::to_string).unwrap_or_default(),
                    condition = error.condition,
                    "XMPP: an error reply came for a message after it counted as delivered; it may not have arrived"
                );
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

    async fn deliver(&mut self, to: &Target, body: &str) -> Result<(), SinkError> {
        let mut resent = false;
        // A message queued when its session ended: sent on the next one, waited for again.
        let mut queued: Option<(Id, StanzaToken)> = None;
        loop {
            self.wait_online().await?;
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
            let (id, token) = match queued.take() {
                Some(sent) => sent,
                None => self.send(to, body).await?,
            };
            match self.wait(to, &id, token.clone()).await? {
                Waited::Delivered => return Ok(()),
                // A user's message goes out with the new session: waited for, not resent.
                // A room's bounces (not in the room yet) and is resent after the rejoin.
                Waited::Reconnected { queued: true } if matches!(to, Target::User(_)) => {
                    queued = Some((id, token));
                }
                Waited::Reconnected { .. } => {}
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

    /// Waits for a session. A login the server refuses (tokio-xmpp retries it forever, and
    /// says so only in its log) fails the post for good.
    async fn wait_online(&mut self) -> Result<(), SinkError> {
        let mark = crate::util::log_bridge::error_mark();
        let mut check = tokio::time::interval(Duration::from_millis(200));
        while !self.online {
            tokio::select! {
                event = self.client.next() => {
                    let event = event.ok_or_else(|| SinkError::Transient("the XMPP client has stopped".into()))?;
                    self.on_event(event);
                }
                _ = check.tick() => {
                    // Only refusals that another try cannot change (not a
                    // temporary-auth-failure of the server's account store).
                    let refused = crate::util::log_bridge::errors_since(mark, "tokio_xmpp")
                        .into_iter()
                        .find(|e| {
                            e.contains("authentication error")
                                && ["NotAuthorized", "AccountDisabled", "CredentialsExpired", "InvalidMechanism", "no matching SASL mechanism", "NoMechanism"]
                                    .iter()
                                    .any(|c| e.contains(c))
                        });
                    if let Some(error) = refused {
                        return Err(SinkError::Permanent(format!(
                            "the XMPP server refused the login of {}: {error}",
                            self.settings.jabberid
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether `jid`'s domain is a chat-room service: its disco#info lists a `conference`
    /// identity (asked once per domain and session's connection). An error reply means a
    /// user's server; one of type `wait` fails the post for now.
    async fn is_room(&mut self, jid: &BareJid) -> Result<bool, SinkError> {
        let domain = jid.domain().to_string();
        if let Some(&known) = self.services.get(&domain) {
            return Ok(known);
        }
        let id = format!("swiftdrop-disco-{}", uuid::Uuid::new_v4().simple());
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
                Iq::Error { error, .. } => {
                    let condition = format!("{:?}", error.defined_condition);
                    if error.type_ == ErrorType::Wait || condition.starts_with("RemoteServer") {
                        return Err(SinkError::Transient(format!(
                            "disco#info {domain}: {condition}"
                        )));
                    }
                    // A domain that will not say: a user's server (not remembered).
                    tracing::info!(
                        domain,
                        condition,
                        "XMPP: disco#info refused; posting as to a user"
                    );
                    return Ok(false);
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
            if presence.type_ == PresenceType::Unavailable {
                // Our leaving (after a destroy) also says 110: no join.
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
                    // Our join made the room: it did not exist. Destroy it (as its owner;
                    // a server that makes rooms persistent keeps it after we leave), and
                    // leave.
                    let destroy = Iq::Set {
                        from: None,
                        to: Some(Jid::from(room.clone())),
                        id: format!("swiftdrop-destroy-{}", uuid::Uuid::new_v4().simple()),
                        payload: tokio_xmpp::minidom::Element::builder("query", MUC_OWNER)
                            .append(
                                tokio_xmpp::minidom::Element::builder("destroy", MUC_OWNER).build(),
                            )
                            .build(),
                    };
                    let _ = self.client.send_stanza(destroy.into()).await;
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

    /// Sends `body` to `to`; its id and token.
    async fn send(&mut self, to: &Target, body: &str) -> Result<(Id, StanzaToken), SinkError> {
        // Random: workers sharing the account sit in the same rooms and see each other's
        // echoes, and process ids repeat (1 in every container).
        let id = Id(format!("swiftdrop-{}", uuid::Uuid::new_v4().simple()));
        let (jid, mut message) = match to {
            Target::Room(room) => (room, Message::groupchat(Jid::from(room.clone()))),
            Target::User(user) | Target::Ask(user) => {
                (user, Message::chat(Jid::from(user.clone())))
            }
        };
        message.id = Some(id.clone());
        message.bodies.insert(Lang::default(), xml_text(body));
        self.handed = true;
        let token = self
            .client
            .send_stanza(message.into())
            .await
            .map_err(|e| SinkError::Transient(format!("send to {jid}: {e}")))?;
        Ok((id, token))
    }

    /// Waits for the proof that the server has the message `id` to `to`: a room's echo of
    /// it; for a user, the server's XEP-0198 ack (the server answers a message to a user
    /// it cannot reach before it acks it), or without stream management, the answer to a
    /// ping sent after it (the server answers in order). An error reply with its id before
    /// that refuses it.
    async fn wait(
        &mut self,
        to: &Target,
        id: &Id,
        mut token: StanzaToken,
    ) -> Result<Waited, SinkError> {
        let room = matches!(to, Target::Room(_));
        let mut use_ack = !room && self.acks;
        let mut ping = if room || use_ack {
            None
        } else {
            Some(self.ping().await?)
        };
        // A new session began while waiting: what was sent before it and never acked is lost.
        let mut new_session = false;
        // A user who took a message before is known to exist: the server's ack (or the
        // ping's answer) is the proof. For another, errors that the server sends after its
        // ack (Prosody checks the account in its own time) are waited for a while.
        let known = match to {
            Target::User(user) => self.known_users.contains(user),
            _ => false,
        };
        let mut window_end: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(window_end.unwrap_or_else(Instant::now)), if window_end.is_some() => {
                    if let Target::User(user) = to {
                        self.known_users.insert(user.clone());
                    }
                    return Ok(Waited::Delivered);
                }
                state = token.wait_for(StanzaStage::Acked), if use_ack && window_end.is_none() => match state {
                    Some(StanzaState::Acked { .. }) if known => return Ok(Waited::Delivered),
                    Some(StanzaState::Acked { .. }) => window_end = Some(Instant::now() + ERROR_WINDOW),
                    Some(StanzaState::Failed { .. }) => {
                        // Never sent (the stream failed around it): sent again.
                        return Ok(Waited::Reconnected { queued: false });
                    }
                    Some(StanzaState::Dropped) | None if new_session => {
                        // Sent, never acked, and dropped with its session: it may or may
                        // not have reached the server.
                        return Ok(Waited::Reconnected { queued: false });
                    }
                    Some(StanzaState::Dropped) | None => {
                        // No ack will come, and no new session is known: the server offered
                        // stream management but it is not on, or the session is ending. A
                        // ping tells which: answered on this session, or a new session.
                        use_ack = false;
                        ping = Some(self.ping().await?);
                    }
                    Some(_) => {}
                },
                event = self.client.next() => {
                    let event = event.ok_or_else(|| SinkError::Transient("the XMPP client has stopped".into()))?;
                    let reply = match event {
                        Event::Stanza(Stanza::Message(m)) if m.id.as_ref() == Some(id) => m,
                        Event::Stanza(Stanza::Iq(iq)) if Some(iq.id()) == ping.as_deref() => {
                            if known {
                                return Ok(Waited::Delivered);
                            }
                            window_end = Some(Instant::now() + ERROR_WINDOW);
                            continue;
                        }
                        other => {
                            if self.on_event(other) {
                                new_session = true;
                                if use_ack && !self.acks && matches!(token.state(), StanzaState::Queued) {
                                    // It goes out on a session without acks: a ping proves it.
                                    use_ack = false;
                                    ping = Some(self.ping().await?);
                                    continue;
                                }
                                if use_ack {
                                    // The token tells: acked on the new session (it was
                                    // queued and went out on it), or dropped with the old
                                    // one's unacked stanzas (lost: sent again).
                                    continue;
                                }
                                // A new session: a message still queued goes out on it (it
                                // must not be sent twice); one sent is lost with the old one.
                                let queued = matches!(token.state(), StanzaState::Queued);
                                return Ok(Waited::Reconnected { queued });
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
                            let jid = match to {
                                Target::Room(j) | Target::User(j) | Target::Ask(j) => j,
                            };
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

    /// Sends a ping (XEP-0199) to our server; its id. Its answer (a result, or an error
    /// from a server without ping) comes after the server dealt with what was sent before.
    async fn ping(&mut self) -> Result<String, SinkError> {
        let id = format!("swiftdrop-ping-{}", uuid::Uuid::new_v4().simple());
        let server = account(&self.settings)
            .map(|jid| Jid::from(BareJid::from_parts(None, jid.domain())))
            .map_err(|e| SinkError::Permanent(e.to_string()))?;
        let ping = Iq::from_get(id.clone(), Ping).with_to(server);
        self.client
            .send_stanza(ping.into())
            .await
            .map_err(|e| SinkError::Transient(format!("ping: {e}")))?;
        Ok(id)
    }
}

/// XEP-0045's owner namespace (a room's destruction).
const MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";

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
