//! The XMPP sink: one long-lived client connection (tokio-xmpp) owned by one task, which
//! keeps up to [`MAX_IN_FLIGHT`] posts out at once, each matched to its answers by its
//! stanza id:
//!
//! - it waits for the session (`Online`) within the post's time (the account's `timeout`,
//!   default [`XmppSettings::DEFAULT_TIMEOUT`], from when the post was asked for): a server
//!   that does not answer makes the action fail for now, it never hangs the worker; a login
//!   the server refuses fails it for good (tokio-xmpp retries it forever and says so only in
//!   its log: [`crate::util::log_bridge`]);
//! - an address without `?join`/`?message` is a room when its domain's disco#info lists a
//!   `conference` identity, else a user (asked once per domain);
//! - it joins a room before posting to it (waiting for the room's presence with status
//!   110), and again after every new session, since a reconnect loses room membership; a
//!   room the join would create (status 201) does not exist: a permanent failure, and the
//!   room is destroyed and left again; connecting, asking and joining are done one post at
//!   a time (answers to the posts in flight are taken meanwhile);
//! - a message counts as delivered only on proof: for a room, the room's echo of it (same
//!   id); for a user, the server's XEP-0198 ack, or without stream management the answer to
//!   a ping sent after it (the server answers in order), and for a user who has not taken a
//!   message yet no error reply within [`ERROR_WINDOW`] after that (Prosody answers for an
//!   unknown account after its ack); the windows of posts in flight run side by side; an
//!   error reply that comes later is logged, not dropped;
//! - an error reply to it (not in the room, kicked) leads to a rejoin and one resend; one
//!   of type `wait` (a rate limit, a busy server) is a failure for now; any other (a room
//!   or user that does not exist) is a permanent failure;
//! - a session that ends while posts wait (tokio-xmpp says so only when the next one
//!   begins): a user's message the server acked stands; one sent but not acked was lost
//!   with the session and is sent again (at worst the server had it: a repeat); a room's is
//!   sent again after the rejoin; a session that is resumed (XEP-0198) keeps its rooms, and
//!   tokio-xmpp itself sends what was not acked. tokio-xmpp puts a stanza on the wire only
//!   in a session, so without stream management a message sent while the server was away
//!   goes out on the new session and cannot be told from one lost with the old: a repeat;
//! - a post whose message is still in the client's queue when its time runs out (no
//!   session) drops the connection and starts a new one (the posts in flight without
//!   proof are sent again on it); the old client is closed, but one still reconnecting
//!   flushes what it had queued once it connects (tokio-xmpp has no way to drop its
//!   queue), so a post that timed out during an outage can still arrive, and again from
//!   the retry: a repeat. A post whose message is out but unproven in time fails for now
//!   and the connection stays;
//! - text that XML cannot carry (control characters) is left out, and bodies are cut at
//!   [`MAX_BODY`] bytes (servers close the stream on large stanzas).
//!
//! tokio-xmpp 6 can stop reading for good: its event reader returns `Pending` without a
//! waker when a stanza arrives while one is being sent (`StanzaReceiver::poll_next` finds
//! the stream's lock taken). A post that runs out of time when nothing at all came from
//! the client since it was sent (or since it was started) replaces the client, which
//! heals that as it heals a server that went away. A caller never waits more than
//! [`ANSWER_GRACE`] past its post's time, whatever the task is waiting on.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::FutureExt;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
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
/// How long past its deadline a post's caller waits for the connection task's answer.
const ANSWER_GRACE: Duration = Duration::from_secs(5);
/// The least time a post must have left to be sent: less, and its message would likely
/// still be in the client's queue at its deadline (which replaces the connection).
const MIN_TIME_LEFT: Duration = Duration::from_secs(1);
/// The most posts waiting for their proof at once on the connection (a burst of alerts
/// is not sent one round trip, or one error window, at a time).
pub const MAX_IN_FLIGHT: usize = 32;

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
    /// The connection task's session is online.
    online: Arc<AtomicBool>,
}

impl XmppSink {
    /// Starts the connection task for `settings` (within a Tokio runtime).
    pub fn start(settings: &XmppSettings) -> Result<XmppSink, String> {
        crate::store::install_tls_provider();
        crate::util::log_bridge::install();
        account(settings)?;
        let (posts, requests) = mpsc::channel(64);
        let online = Arc::new(AtomicBool::new(false));
        let connection = Connection {
            client: new_client(settings),
            settings: settings.clone(),
            online: false,
            shown_online: Arc::clone(&online),
            acks: false,
            joined: HashSet::new(),
            services: HashMap::new(),
            known_users: HashSet::new(),
            handed: false,
            restarted: false,
            last_event: Instant::now(),
            nick: settings.nick.clone(),
            in_flight: Vec::new(),
            again: VecDeque::new(),
            ack_waits: FuturesUnordered::new(),
        };
        tokio::spawn(connection.run(requests));
        Ok(XmppSink {
            posts,
            timeout: settings.timeout,
            online,
        })
    }

    /// Whether the connection is online now (the worker's readiness).
    pub fn reachable(&self) -> Result<(), String> {
        if self.online.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("the XMPP connection is not online".into())
        }
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
        // The task answers by the deadline; should it be held up (one of its awaits is
        // bounded by another post's time), the caller still is not.
        match timeout_at(deadline + ANSWER_GRACE, result).await {
            Ok(answer) => answer.map_err(|_| gone())?,
            Err(_) => Err(SinkError::Transient(
                "no answer from the XMPP connection task in time".into(),
            )),
        }
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
    /// `online`, for the sink's readiness check.
    shown_online: Arc<AtomicBool>,
    /// The session acknowledges stanzas (XEP-0198).
    acks: bool,
    /// Rooms joined in this session.
    joined: HashSet<BareJid>,
    /// Whether each domain asked is a chat-room service (disco#info).
    services: HashMap<String, bool>,
    /// Users who took a message without an error reply within [`ERROR_WINDOW`].
    known_users: HashSet<BareJid>,
    /// The message of the post being started is in the client's queue, not on the wire yet
    /// (it would go out even after the post gave up).
    handed: bool,
    /// When the client last gave an event (anything read from the server).
    last_event: Instant,
    /// A new session began while a post was being started (its join or disco#info was
    /// cut short: it is started again).
    restarted: bool,
    nick: String,
    /// Posts sent and waiting for their proof, at most [`MAX_IN_FLIGHT`].
    in_flight: Vec<InFlight>,
    /// Posts to send again (lost with a session, or bounced by a room we were no longer
    /// in), before new ones.
    again: VecDeque<Pending>,
    /// The XEP-0198 acks waited for: each post's id and its token's end.
    ack_waits: FuturesUnordered<BoxFuture<'static, (Id, Option<StanzaState>)>>,
}

/// A post not sent yet (or to send again).
struct Pending {
    post: Post,
    /// Sent once more already after a rejoin (a second bounce is final).
    resent: bool,
}

/// A post whose message is out, waiting for its proof.
struct InFlight {
    pending: Pending,
    /// Where it went (a room or a user, asked already).
    to: Target,
    id: Id,
    token: StanzaToken,
    proof: Proof,
    /// A new session began after it was sent: a message dropped unacked is lost.
    new_session: bool,
    /// When its message was on the wire.
    sent_at: Instant,
}

/// What counts as the proof that the server has a message.
#[derive(Debug, PartialEq, Eq)]
enum Proof {
    /// The room's echo of it (every occupant has it).
    Echo,
    /// The server's XEP-0198 ack.
    Ack,
    /// The answer to the ping with this id, sent after it (no stream management).
    Ping(String),
    /// No error reply until then (a user who has not taken a message yet).
    Window(Instant),
}

/// What a post's latest news means.
enum Verdict {
    /// Still waiting for its proof.
    Wait,
    Done(Result<(), SinkError>),
    /// Lost with its session, or bounced by a room to join again: sent again.
    SendAgain,
}

impl Connection {
    /// Whether the session is online (also shown to the sink's readiness check).
    fn set_online(&mut self, online: bool) {
        self.online = online;
        self.shown_online.store(online, Ordering::Relaxed);
    }

    async fn run(mut self, mut requests: mpsc::Receiver<Post>) {
        loop {
            if let Some(pending) = self.again.pop_front() {
                self.start(pending).await;
                continue;
            }
            let wake = self.next_wake();
            tokio::select! {
                // Answers first: a proof that came with a deadline is a proof.
                biased;
                event = self.client.next() => match event {
                    Some(event) => {
                        self.observe(event);
                        // A busy room keeps this branch ready: the timer is not starved.
                        if wake.is_some_and(|w| w <= Instant::now()) {
                            self.tick().await;
                        }
                    }
                    // tokio-xmpp's stream worker ended (it should not): a new client (the
                    // old one is dropped: its send_end would panic on the ended worker).
                    None => {
                        self.client = new_client(&self.settings);
                        self.set_online(false);
                        self.joined.clear();
                        self.lost_connection();
                        tracing::warn!("XMPP: the client's stream worker ended; connecting again");
                    }
                },
                Some((id, state)) = self.ack_waits.next(), if !self.ack_waits.is_empty() => {
                    self.acked(&id, state).await;
                }
                _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {
                    self.tick().await;
                }
                post = requests.recv(), if self.in_flight.len() < MAX_IN_FLIGHT => {
                    let Some(post) = post else { break };
                    self.start(Pending { post, resent: false }).await;
                }
            }
        }
        // The last handle is gone: every post was answered (a post's caller waits for it).
        let _ = self.client.send_end().await;
    }

    /// The earliest time a post in flight must be looked at: its deadline, or the end of
    /// its error window.
    fn next_wake(&self) -> Option<Instant> {
        self.in_flight
            .iter()
            .map(|f| match f.proof {
                Proof::Window(end) => end.min(f.pending.post.deadline),
                _ => f.pending.post.deadline,
            })
            .min()
    }

    /// Sends a post's message (connecting, asking what the address is and joining the
    /// room first when needed), within the post's time.
    async fn start(&mut self, pending: Pending) {
        let deadline = pending.post.deadline;
        if Instant::now() + MIN_TIME_LEFT >= deadline {
            // Its time ran out behind other posts: not sent at all.
            let _ = pending.post.done.send(Err(SinkError::Transient(
                "no turn on the XMPP connection in time".into(),
            )));
            return;
        }
        self.handed = false;
        self.restarted = false;
        let started = Instant::now();
        match timeout_at(deadline, self.send_post(&pending.post)).await {
            Ok(Ok((to, id, token, proof))) => {
                if proof == Proof::Ack {
                    self.watch_ack(&id, &token);
                }
                self.in_flight.push(InFlight {
                    pending,
                    to,
                    id,
                    token,
                    proof,
                    new_session: false,
                    sent_at: Instant::now(),
                });
            }
            // A join or disco#info cut short by a new session: nothing of it was sent.
            Ok(Err(SinkError::Transient(_))) if self.restarted => {
                self.again.push_front(pending);
            }
            Ok(Err(e)) => {
                let _ = pending.post.done.send(Err(e));
            }
            Err(_) => {
                // A message still in the client's queue would go out later, or the client
                // gave nothing at all while the post waited on it (a server away, or a
                // client that stopped reading): the client goes.
                if self.handed || self.last_event < started {
                    self.drop_connection("a post ran out of time").await;
                }
                let _ = pending.post.done.send(Err(SinkError::Transient(
                    "no confirmation from the XMPP server in time".into(),
                )));
            }
        }
    }

    /// Connects, asks, joins and sends; where the message went, its id and token, and what
    /// will prove that the server has it.
    async fn send_post(
        &mut self,
        post: &Post,
    ) -> Result<(Target, Id, StanzaToken, Proof), SinkError> {
        self.wait_online().await?;
        // What the client has ready (a new session's start, an echo) is taken first, so
        // that the message goes out knowing the session and its rooms.
        self.take_ready_events();
        // The session waited for is no interruption; one that begins from here is.
        self.restarted = false;
        let to = match &post.to {
            Target::Ask(jid) if self.is_room(jid).await? => Target::Room(jid.clone()),
            Target::Ask(jid) => Target::User(jid.clone()),
            to => to.clone(),
        };
        if let Target::Room(room) = &to {
            if !self.joined.contains(room) {
                self.join(room).await?;
            }
        }
        let (id, token) = self.send(&to, &post.body).await?;
        let proof = match &to {
            Target::Room(_) => Proof::Echo,
            _ if self.acks => Proof::Ack,
            _ => Proof::Ping(self.ping().await?),
        };
        Ok((to, id, token, proof))
    }

    /// Waits for the XEP-0198 ack of a post's message.
    fn watch_ack(&mut self, id: &Id, token: &StanzaToken) {
        let (id, mut token) = (id.clone(), token.clone());
        self.ack_waits
            .push(async move { (id, token.wait_for(StanzaStage::Acked).await) }.boxed());
    }

    /// Replaces the client, dropping what it still had queued (a post that ran out of
    /// time must not go out later); the next post connects again.
    async fn drop_connection(&mut self, why: &str) {
        // Answers the old client read already still count.
        self.take_ready_events();
        let old = std::mem::replace(&mut self.client, new_client(&self.settings));
        self.set_online(false);
        self.joined.clear();
        self.lost_connection();
        tokio::spawn(async move {
            let _ = old.send_end().await;
        });
        tracing::warn!("XMPP: {why}; connecting again");
    }

    /// The client was replaced: a post the server has proven to have (acked, or in its
    /// error window) is delivered; any other is sent again on the new client (if the old
    /// one had delivered it: a repeat).
    fn lost_connection(&mut self) {
        for f in std::mem::take(&mut self.in_flight) {
            if f.has_proof() {
                let _ = f.pending.post.done.send(Ok(()));
            } else {
                self.again.push_back(f.pending);
            }
        }
    }

    /// Takes the events the client has ready, without waiting.
    fn take_ready_events(&mut self) {
        while let Some(Some(event)) = self.client.next().now_or_never() {
            self.observe(event);
        }
    }

    /// Keeps the session state; true for a new session (not for a resumed one, which
    /// keeps its rooms).
    fn on_event(&mut self, event: Event) -> bool {
        match event {
            Event::Online { resumed: true, .. } => {
                self.set_online(true);
                tracing::info!("XMPP session resumed");
                false
            }
            Event::Online { features, .. } => {
                self.set_online(true);
                self.acks = features.stream_management.is_some();
                self.joined.clear();
                tracing::info!(acks = self.acks, "XMPP session started");
                true
            }
            // tokio-xmpp 6 does not send it (a session that ends is seen when the next
            // begins); kept for a version that does.
            Event::Disconnected(e) => {
                self.set_online(false);
                tracing::warn!(error = %e, "XMPP connection lost");
                false
            }
            Event::Stanza(Stanza::Message(m)) if m.type_ == MessageType::Error => {
                // The error of a message that counted as delivered (or ran out of time, or
                // was sent again): said, not dropped.
                let error = StanzaError::of(&m.payloads);
                tracing::warn!(
                    id = m.id.as_ref().map(|i| i.0.as_str()).unwrap_or("-"),
                    from = m.from.as_ref().map(ToString::to_string).unwrap_or_default(),
                    condition = error.condition,
                    "XMPP: an error reply came for a message no post waits for; it may not have arrived"
                );
                false
            }
            Event::Stanza(_) => false,
        }
    }

    /// Takes an event from the client: a reply to a post in flight settles it, a new
    /// session decides the fate of every post in flight. True for a new session.
    fn observe(&mut self, event: Event) -> bool {
        self.last_event = Instant::now();
        let answers = |f: &InFlight| match &event {
            Event::Stanza(Stanza::Message(m)) => m.id.as_ref() == Some(&f.id),
            Event::Stanza(Stanza::Iq(iq)) => matches!(&f.proof, Proof::Ping(p) if p == iq.id()),
            _ => false,
        };
        if let Some(at) = self.in_flight.iter().position(answers) {
            let verdict = match &event {
                Event::Stanza(Stanza::Message(m)) => self.in_flight[at].answered(m),
                _ => self.proven(at),
            };
            self.settle(at, verdict);
            return false;
        }
        let new_session = self.on_event(event);
        if new_session {
            self.restarted = true;
            self.new_session();
        }
        new_session
    }

    /// A new session: a room's message is sent again after the rejoin. A user's message
    /// the server acked (or whose error window runs) stands; one whose ack the token
    /// still waits for is told by it (acked on the new session, or dropped unacked: lost);
    /// any other was sent without proof and is sent again (tokio-xmpp sends a stanza only
    /// on a session, so without stream management one sent while the server was away
    /// went out on the new session and cannot be told from one lost with the old: a
    /// repeat).
    fn new_session(&mut self) {
        let mut at = 0;
        while at < self.in_flight.len() {
            let f = &mut self.in_flight[at];
            f.new_session = true;
            let verdict = match (&f.to, &f.proof) {
                (_, Proof::Window(_)) => Verdict::Wait,
                (Target::Room(_), _) => Verdict::SendAgain,
                (_, Proof::Ack) if self.acks || f.has_proof() => Verdict::Wait,
                _ => Verdict::SendAgain,
            };
            if self.settle(at, verdict) {
                at += 1;
            }
        }
    }

    /// The XEP-0198 ack of post `id` came (or no ack will: the token's end).
    async fn acked(&mut self, id: &Id, state: Option<StanzaState>) {
        let Some(at) = self
            .in_flight
            .iter()
            .position(|f| &f.id == id && f.proof == Proof::Ack)
        else {
            return;
        };
        let verdict = match state {
            Some(StanzaState::Acked { .. }) => self.proven(at),
            // Never sent (the stream failed around it), or sent, never acked, and dropped
            // with its session: sent again.
            Some(StanzaState::Failed { .. }) => Verdict::SendAgain,
            _ if self.in_flight[at].new_session => Verdict::SendAgain,
            // No ack will come, and no new session is seen yet: the session is ending (a
            // stream error drops what awaited acks at once), or the server would not turn
            // stream management on. A ping tells which: the new session's start is read
            // before its answer (the post is then sent again), else it is answered on this
            // one. The ping waits for a session, within the post's time.
            _ if Instant::now() >= self.in_flight[at].pending.post.deadline => Verdict::Done(Err(
                SinkError::Transient("no confirmation from the XMPP server in time".into()),
            )),
            _ => {
                let deadline = self.in_flight[at].pending.post.deadline;
                match timeout_at(deadline, self.ping()).await {
                    Ok(Ok(ping)) => {
                        self.in_flight[at].proof = Proof::Ping(ping);
                        Verdict::Wait
                    }
                    Ok(Err(e)) => Verdict::Done(Err(e)),
                    Err(_) => Verdict::Done(Err(SinkError::Transient(
                        "no confirmation from the XMPP server in time".into(),
                    ))),
                }
            }
        };
        self.settle(at, verdict);
    }

    /// The server has post `at`'s message (acked, or answered a ping sent after it): a
    /// known user's is delivered; another's waits [`ERROR_WINDOW`] for an error reply.
    fn proven(&mut self, at: usize) -> Verdict {
        let f = &mut self.in_flight[at];
        if matches!(&f.to, Target::User(user) if !self.known_users.contains(user)) {
            f.proof = Proof::Window(Instant::now() + ERROR_WINDOW);
            Verdict::Wait
        } else {
            Verdict::Done(Ok(()))
        }
    }

    /// Posts whose error window ended are delivered, and the user learnt; at their
    /// deadline, posts the server acked are delivered (without learning the user: the
    /// window was cut short); posts out of time without proof fail for now. Their messages
    /// are on the wire: the connection stays, unless nothing at all came from it since
    /// they were sent (a client that stopped reading: a new one).
    async fn tick(&mut self) {
        let now = Instant::now();
        let mut silent = false;
        let mut at = 0;
        while at < self.in_flight.len() {
            let f = &self.in_flight[at];
            let late = f.pending.post.deadline <= now;
            let verdict = match f.proof {
                Proof::Window(end) if end <= now => {
                    // A window across a new session heard nothing (errors go to the old
                    // session's address): no lesson.
                    if let (Target::User(user), false) = (&f.to, f.new_session) {
                        self.known_users.insert(user.clone());
                    }
                    Verdict::Done(Ok(()))
                }
                _ if late && f.has_proof() => Verdict::Done(Ok(())),
                _ if late => {
                    silent |= self.last_event < f.sent_at;
                    Verdict::Done(Err(SinkError::Transient(
                        "no confirmation from the XMPP server in time".into(),
                    )))
                }
                _ => Verdict::Wait,
            };
            if self.settle(at, verdict) {
                at += 1;
            }
        }
        if silent {
            self.drop_connection("nothing came from the server since posts were sent")
                .await;
        }
    }

    /// Acts on post `at`'s verdict; true when it stays in flight.
    fn settle(&mut self, at: usize, verdict: Verdict) -> bool {
        match verdict {
            Verdict::Wait => true,
            Verdict::Done(result) => {
                let f = self.in_flight.remove(at);
                let _ = f.pending.post.done.send(result);
                false
            }
            Verdict::SendAgain => {
                let f = self.in_flight.remove(at);
                if let Target::Room(room) = &f.to {
                    // Bounced (not in the room) or lost with the session: joined again first.
                    self.joined.remove(room);
                }
                self.again.push_back(f.pending);
                false
            }
        }
    }

    async fn next_event(&mut self) -> Result<Event, SinkError> {
        self.client
            .next()
            .await
            .ok_or_else(|| SinkError::Transient("the XMPP client has stopped".into()))
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
                    self.observe(event);
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
                    if self.observe(other) {
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
                    if self.observe(other) {
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
        // tokio-xmpp's send_stanza returns once the stanza is on the wire: while it waits
        // (no session), the stanza sits in the client's queue and would go out later.
        self.handed = true;
        let token = self
            .client
            .send_stanza(message.into())
            .await
            .map_err(|e| SinkError::Transient(format!("send to {jid}: {e}")));
        self.handed = false;
        Ok((id, token?))
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

impl InFlight {
    /// The server has its message: acked (the token says so even before its ack is
    /// read), or its error window runs.
    fn has_proof(&self) -> bool {
        matches!(self.proof, Proof::Window(_))
            || (self.proof == Proof::Ack && matches!(self.token.state(), StanzaState::Acked { .. }))
    }

    /// A message with this post's id came: an error reply refuses it (not in the room:
    /// joined again and sent once more; type `wait`: a failure for now; any other: a
    /// permanent failure); the room's echo delivers it.
    fn answered(&mut self, reply: &Message) -> Verdict {
        match (&reply.type_, &self.to) {
            (MessageType::Error, to) => {
                let error = StanzaError::of(&reply.payloads);
                let (Target::Room(jid) | Target::User(jid) | Target::Ask(jid)) = to;
                let why = format!("{jid} answered {}", error.condition);
                let rejoin = matches!(to, Target::Room(_))
                    && ["not-acceptable", "forbidden", "not-allowed"]
                        .contains(&error.condition.as_str());
                if error.wait {
                    Verdict::Done(Err(SinkError::Transient(why)))
                } else if rejoin && !self.pending.resent {
                    tracing::info!(%why, "XMPP: posting again after a rejoin");
                    self.pending.resent = true;
                    Verdict::SendAgain
                } else {
                    Verdict::Done(Err(SinkError::Permanent(why)))
                }
            }
            (MessageType::Groupchat, Target::Room(_)) if self.proof == Proof::Echo => {
                Verdict::Done(Ok(()))
            }
            _ => Verdict::Wait,
        }
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
