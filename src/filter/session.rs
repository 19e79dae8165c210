//! One SMTP session: a state machine over smtp-proto's receivers, generic over any byte
//! stream, so tests drive it without sockets.
//!
//! The session frames command lines itself (smtp-proto enforces its 4096-byte limit only on
//! lines that span reads), handles XFORWARD (which smtp-proto does not know) and hands every
//! other line to `smtp_proto::Request::parse`. Message bytes go through `DataReceiver`
//! (dot-unstuffing) or `BdatReceiver`. Protocol errors are replies, never Rust errors; the
//! final `250` is written only after [`Deliverer::deliver`] confirmed every write.
//!
//! Message bytes are held only within the shared memory budget ([`crate::filter::budget`]): the
//! buffer grows only by what was reserved first. A transaction that finds no room waits for
//! it up to `memory_wait`, reading nothing meanwhile (its client is held back by TCP), and
//! only then gets `452 4.3.1`. Past `stream_threshold` the bytes go on to the stores as they arrive, and to
//! a spool file when recipients are relayed ([`crate::filter::spool`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use smtp_proto::Request;
use smtp_proto::request::receiver::{BdatReceiver, DataReceiver, DummyDataReceiver};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::config::ServerSettings;
use crate::config::memory::{READ_SLACK, SPOOL_MEMORY, STREAM_MEMORY, STREAMING_BUFFER};
use crate::filter::budget::{HoldingWait, MemoryBudget, Reservation};
use crate::filter::deliver::{Deliverer, Delivery, Route};
use crate::filter::envelope::{Client, Envelope, Recipient, mailbox};
use crate::filter::outcome::DeliveryError;
use crate::filter::reply::{self, Reply};
use crate::filter::spool::{RelayBody, Spool};
use crate::filter::xforward::{self, ClientAttributes};
use crate::telemetry::metrics::{Kind, metrics, reply_class};
use crate::util::logging::list;

/// Longest command line accepted, CRLF included.
pub const MAX_LINE: usize = 4096;

/// How much to ask the socket for per read: at most this much message data comes in at once
/// (a streaming transaction keeps room for two such reads, [`STREAMING_BUFFER`]).
const READ_CHUNK: usize = READ_SLACK;

/// What the session is reading now.
enum State {
    /// Command lines.
    Command,
    /// The rest of a command line that was too long: discard it, then reply 500.
    SkipLine,
    /// DATA content, collected into the transaction's body.
    Data(DataReceiver),
    /// DATA content that will not be stored (over the size limit): discard, then reply.
    DiscardData(DummyDataReceiver, Reply),
    /// A BDAT chunk, collected into the transaction's body; `left` bytes of it are to come.
    Bdat { receiver: BdatReceiver, left: usize },
    /// A BDAT chunk that will not be stored: discard, then reply; `abort` ends the
    /// transaction (over the size limit), otherwise it stays open (e.g. no recipient yet).
    DiscardBdat {
        receiver: DummyDataReceiver,
        reply: Reply,
        abort: bool,
    },
}

/// What the loop does next.
enum Step {
    /// More buffered input may be processed.
    Continue,
    /// The buffer holds no complete unit: flush replies and read.
    NeedInput,
    /// The message is complete: store it, then reply.
    Deliver,
    /// The buffered message is past `stream_threshold`: send it on to the stores, then
    /// deliver (`true`, the message is complete) or read on.
    Stream(bool),
    /// Flush replies and close the connection.
    Close,
    /// The memory budget has no room for this many more bytes: wait for it (reading
    /// nothing), then take the same step again.
    WaitForMemory(usize),
}

/// Result of waiting for input.
enum Input {
    Data,
    Eof,
    IdleTimeout,
    /// `session_timeout` or `data_timeout` ran out (named here, for the log).
    TimeLimit(&'static str),
    Shutdown,
}

/// A mail transaction between MAIL and the final reply.
struct Transaction {
    envelope: Envelope,
    /// Message bytes; for DATA the first `body_start` bytes are the CRLF that primes
    /// smtp-proto's receiver so that a first line starting with `.` is unstuffed too.
    body: Vec<u8>,
    body_start: usize,
    /// BDAT was used: DATA is no longer allowed, nor are more recipients.
    chunking: bool,
    /// Where the message bytes go; once streaming, `body` holds only bytes not yet sent on.
    sending: Sending,
    /// Message bytes that left `body` early: sent on to the stores, or dropped after a
    /// failure of that.
    streamed: usize,
    /// When the message's data must have ended (`data_timeout` after DATA or the first BDAT).
    data_deadline: Option<tokio::time::Instant>,
    /// What the transaction holds of the memory budget: `body`'s capacity plus
    /// `streaming_memory`.
    memory: Reservation,
    /// Reserved for the destinations' upload parts and the spool's buffers while streaming.
    streaming_memory: usize,
    /// The message from its first byte, for relayed recipients, once it streams.
    spool: Option<Spool>,
    /// How long the transaction has waited for room in the memory budget, in all (at most
    /// `memory_wait`).
    memory_waited: std::time::Duration,
}

/// Where a transaction's message bytes go.
enum Sending {
    /// Held in [`Transaction::body`] until the end of data.
    Buffered,
    /// Past `stream_threshold`: sent on to the stores as they arrive.
    Streaming(Delivery),
    /// Streaming failed: the rest of the data is read and dropped, and the final reply is
    /// this error's.
    Failed(DeliveryError),
}

impl Transaction {
    fn message_len(&self) -> usize {
        self.streamed + self.body.len() - self.body_start
    }

    /// Past `threshold` (or once begun), the bytes are sent on as they arrive.
    fn streams(&self, threshold: usize) -> bool {
        !matches!(self.sending, Sending::Buffered) || self.message_len() > threshold
    }

    /// The bytes of `body` that may be sent on now: at the end of data all of them; before,
    /// all but a final CR, which may begin the end-of-data line (`.\r\n`): smtp-proto's
    /// receiver takes that CR back out of the buffer when the LF arrives.
    fn ready(&self, done: bool) -> std::ops::Range<usize> {
        let held = !done && self.body.len() > self.body_start && self.body.last() == Some(&b'\r');
        self.body_start..self.body.len() - usize::from(held)
    }

    /// Makes room in `body` for `incoming` more bytes, reserving it from the budget first;
    /// `Err` with the bytes that found no room. The buffer doubles as it grows, up to what
    /// it may hold before it is sent on (`threshold` plus one read).
    fn make_room(&mut self, incoming: usize, threshold: usize) -> Result<(), usize> {
        let needed = self.body.len().saturating_add(incoming);
        if needed <= self.body.capacity() {
            return Ok(());
        }
        let doubled = self.body.capacity().saturating_mul(2);
        let grown = needed.max(doubled.min(threshold.saturating_add(READ_SLACK)));
        self.memory.resize(self.reserved_for(grown))?;
        self.body.reserve_exact(grown - self.body.len());
        Ok(())
    }

    /// What the transaction reserves for a buffer of `capacity` bytes: that, its streaming
    /// memory, and, while it streams, never less than [`STREAMING_BUFFER`] for the buffer.
    /// Bytes that stream pass through the buffer one read at a time, so once it streams the
    /// buffer never needs room it has to win back from others: a message that got its 354
    /// with its SIZE reserved does not fail for memory halfway.
    fn reserved_for(&self, capacity: usize) -> usize {
        let floor = if self.streaming_memory > 0 {
            STREAMING_BUFFER
        } else {
            0
        };
        capacity.max(floor).saturating_add(self.streaming_memory)
    }

    /// Gives the reservation back down to what is held now (never more than reserved: the
    /// buffer grew only by what make_room reserved, and streaming's room was reserved by
    /// `reserve_streaming`).
    fn sync_memory(&mut self) {
        let held = self.reserved_for(self.body.capacity());
        let _shrunk = self.memory.resize(held.min(self.memory.bytes()));
    }

    /// Drops the message's bytes: what was streamed is taken back (the dropped delivery
    /// aborts in the background) and the memory is given back.
    fn drop_body(&mut self) {
        self.body = Vec::new();
        self.body_start = 0;
        self.sending = Sending::Buffered;
        self.spool = None;
        self.streaming_memory = 0;
        self.sync_memory();
    }
}

/// One client connection.
pub struct Session<S> {
    io: S,
    settings: Arc<ServerSettings>,
    deliverer: Arc<Deliverer>,
    memory: Arc<MemoryBudget>,
    shutdown: watch::Receiver<bool>,
    xforward_allowed: bool,
    /// Whether recipients no destination takes may be relayed for this client.
    relay_allowed: bool,
    client: Client,
    inbuf: BytesMut,
    out: Vec<u8>,
    state: State,
    transaction: Option<Transaction>,
    errors: usize,
    /// When the session must end (`session_timeout` after it began).
    deadline: tokio::time::Instant,
    /// This session's place among the sessions that wait while they hold memory.
    holding_wait: Option<HoldingWait>,
    /// The step being retried may not wait (the sessions that wait while they hold memory
    /// could not all be served beside it).
    may_not_wait: bool,
    /// A command line to take again once the memory it waits for is there (DATA).
    retry_line: Option<Bytes>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// A session with a client at `peer`, holding message bytes within `memory` (shared by
    /// all sessions). `shutdown` turning true asks idle sessions to end.
    pub fn new(
        io: S,
        peer: SocketAddr,
        settings: Arc<ServerSettings>,
        deliverer: Arc<Deliverer>,
        memory: Arc<MemoryBudget>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let ip = peer.ip().to_canonical();
        let xforward_allowed = settings.xforward_networks.iter().any(|n| n.contains(&ip));
        let relay_allowed = settings.relay_networks.iter().any(|n| n.contains(&ip));
        Session {
            io,
            deliverer,
            memory,
            shutdown,
            xforward_allowed,
            relay_allowed,
            client: Client {
                peer,
                helo: None,
                forwarded: ClientAttributes::default(),
            },
            // Command lines first: a session grows its buffer to READ_CHUNK only for message
            // data, so that thousands of idle sessions hold little.
            inbuf: BytesMut::with_capacity(MAX_LINE),
            out: Vec::with_capacity(1024),
            state: State::Command,
            transaction: None,
            errors: 0,
            deadline: tokio::time::Instant::now() + settings.session_timeout,
            holding_wait: None,
            may_not_wait: false,
            retry_line: None,
            settings,
        }
    }

    /// Runs the session to its end. I/O errors (the client vanished) end it early; nothing
    /// is stored for a transaction that did not reach its end of data.
    pub async fn run(mut self) -> std::io::Result<()> {
        self.push(reply::greeting(&self.settings.hostname));
        loop {
            let step = self.step();
            if !matches!(step, Step::WaitForMemory(_)) {
                self.end_memory_wait();
            }
            match step {
                Step::WaitForMemory(bytes) => {
                    // The client sees every reply before the wait, not after it.
                    self.flush().await?;
                    if self.may_wait_holding(bytes) {
                        self.wait_for_memory(bytes).await;
                    } else {
                        // The step is taken again, and refuses.
                        self.may_not_wait = true;
                    }
                }
                Step::Continue => {}
                // Delivering and streaming are boxed: their futures are large, and an idle
                // session (most of them, most of the time) should not carry their room.
                Step::Deliver => {
                    let reply = Box::pin(self.deliver()).await;
                    self.push(reply);
                }
                Step::Stream(done) => {
                    Box::pin(self.stream_out(done)).await;
                    if done {
                        let reply = Box::pin(self.deliver()).await;
                        self.push(reply);
                    }
                }
                Step::Close => return self.flush().await,
                Step::NeedInput => {
                    self.flush().await?;
                    match self.read().await? {
                        Input::Data => {}
                        Input::Eof => {
                            self.log_disconnect();
                            return Ok(());
                        }
                        Input::IdleTimeout => {
                            tracing::info!(client = %self.client.display(), "idle timeout");
                            self.push(reply::idle_timeout());
                            return self.flush().await;
                        }
                        Input::TimeLimit(limit) => {
                            tracing::warn!(client = %self.client.display(), limit, "time limit exceeded; closing (nothing stored for an unfinished message)");
                            self.push(reply::time_limit());
                            return self.flush().await;
                        }
                        Input::Shutdown => {
                            self.push(reply::shutting_down());
                            return self.flush().await;
                        }
                    }
                }
            }
        }
    }

    /// Whether a step that found no room in the memory budget may wait for it: while its
    /// transaction has waited less than `memory_wait` in all (nor past the session's end),
    /// and not when [`Self::may_wait_holding`] said no.
    fn may_wait_for_memory(&self) -> bool {
        let waited = self
            .transaction
            .as_ref()
            .map_or(std::time::Duration::ZERO, |tx| tx.memory_waited);
        !self.may_not_wait
            && waited < self.settings.memory_wait
            && tokio::time::Instant::now() < self.deadline
    }

    /// A transaction that holds memory (a buffer that must grow, one that begins to
    /// stream) may wait only while every transaction that waits holding memory could be
    /// served at once, this one with its `short` bytes included: so no two of them can wait
    /// for what the other holds ([`MemoryBudget::holding_wait`]). One that has not begun
    /// (at DATA) always may: it holds nothing, and waits in the queue of those that begin.
    fn may_wait_holding(&mut self, short: usize) -> bool {
        let Some(tx) = self.transaction.as_ref() else {
            return true;
        };
        if !tx.memory.begun() || self.holding_wait.is_some() {
            return true;
        }
        self.holding_wait = self.memory.holding_wait(tx.memory.bytes(), short);
        self.holding_wait.is_some()
    }

    /// Waits for `bytes` of room in the memory budget, until the transaction has waited
    /// `memory_wait` in all; the step is then taken again (and refuses if there is still
    /// none). The time waited is not the client's: its `data_timeout` moves on by as much.
    async fn wait_for_memory(&mut self, bytes: usize) {
        let Some(tx) = self.transaction.as_mut() else {
            return;
        };
        let started = tokio::time::Instant::now();
        if tx.memory_waited.is_zero() {
            tracing::debug!(client = %self.client.display(), bytes, "waiting for room in max_memory");
        }
        let left = self.settings.memory_wait.saturating_sub(tx.memory_waited);
        let until = (started + left).min(self.deadline);
        tx.memory.wait_for_room(bytes, until).await;
        let waited = started.elapsed();
        if let Some(tx) = self.transaction.as_mut() {
            tx.memory_waited += waited;
            if let Some(deadline) = tx.data_deadline.as_mut() {
                *deadline += waited;
            }
        }
    }

    /// The step that waited for memory got it, or refused: the next one starts afresh (and
    /// a refused transaction does not keep others waiting behind it).
    fn end_memory_wait(&mut self) {
        self.holding_wait = None;
        self.may_not_wait = false;
        if let Some(tx) = self.transaction.as_mut() {
            tx.memory.leave_queue();
        }
    }

    fn push(&mut self, reply: Reply) {
        self.out.extend_from_slice(&reply.to_wire());
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let write = async {
            self.io.write_all(&self.out).await?;
            self.io.flush().await
        };
        match tokio::time::timeout(self.settings.idle_timeout, write).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "client does not read its replies",
                ));
            }
        }
        self.out.clear();
        Ok(())
    }

    /// Waits for more bytes. Only a session between transactions gives way to shutdown.
    async fn read(&mut self) -> std::io::Result<Input> {
        let between = self.transaction.is_none() && matches!(self.state, State::Command);
        let commands = matches!(self.state, State::Command | State::SkipLine);
        self.inbuf
            .reserve(if commands { MAX_LINE } else { READ_CHUNK });
        let (limit, name) = match self.transaction.as_ref().and_then(|tx| tx.data_deadline) {
            Some(data) if data < self.deadline => (data, "data_timeout"),
            _ => (self.deadline, "session_timeout"),
        };
        let idle = tokio::time::Instant::now() + self.settings.idle_timeout;
        // Message data comes in at most READ_CHUNK at a time, whatever room the buffer has.
        let mut room = (&mut self.inbuf).limit(if commands { usize::MAX } else { READ_CHUNK });
        let read = tokio::time::timeout_at(idle.min(limit), self.io.read_buf(&mut room));
        let shutdown = self.shutdown.wait_for(|stop| *stop);
        tokio::select! {
            biased;
            _ = shutdown, if between => Ok(Input::Shutdown),
            result = read => match result {
                Err(_) if limit <= idle => Ok(Input::TimeLimit(name)),
                Err(_) => Ok(Input::IdleTimeout),
                Ok(Ok(0)) => Ok(Input::Eof),
                Ok(Ok(_)) => Ok(Input::Data),
                Ok(Err(e)) => Err(e),
            },
        }
    }

    fn log_disconnect(&self) {
        match (&self.state, &self.transaction) {
            (
                State::Data(_)
                | State::Bdat { .. }
                | State::DiscardData(..)
                | State::DiscardBdat { .. },
                _,
            ) => {
                tracing::warn!(client = %self.client.display(), "client disconnected during message data; nothing stored")
            }
            (_, Some(tx)) => tracing::info!(
                client = %self.client.display(),
                from = %tx.envelope.sender,
                "client disconnected before the end of the transaction; nothing stored"
            ),
            _ => tracing::debug!(client = %self.client.display(), "client disconnected"),
        }
    }

    /// Processes buffered input up to one unit of work.
    fn step(&mut self) -> Step {
        let may_wait = self.may_wait_for_memory();
        match &mut self.state {
            State::Command => self.command_step(),
            State::SkipLine => match memchr::memchr(b'\n', &self.inbuf) {
                Some(pos) => {
                    self.inbuf.advance(pos + 1);
                    self.state = State::Command;
                    self.protocol_error(reply::line_too_long())
                }
                None => {
                    self.inbuf.clear();
                    Step::NeedInput
                }
            },
            State::Data(receiver) => {
                let tx = self.transaction.as_mut().expect("DATA has a transaction");
                if let Err(short) = tx.make_room(self.inbuf.len(), self.settings.stream_threshold) {
                    if may_wait {
                        return Step::WaitForMemory(short);
                    }
                    let discard = DummyDataReceiver::new_data(receiver);
                    tx.drop_body();
                    self.state = State::DiscardData(discard, self.no_memory());
                    return Step::Continue;
                }
                let mut it = self.inbuf.iter();
                let done = receiver.ingest(&mut it, &mut tx.body);
                let consumed = self.inbuf.len() - it.as_slice().len();
                self.inbuf.advance(consumed);
                if tx.message_len() > self.settings.max_message_size {
                    let discard = DummyDataReceiver::new_data(receiver);
                    tx.drop_body();
                    if done {
                        return self.end_discarded(reply::too_big());
                    }
                    self.state = State::DiscardData(discard, reply::too_big());
                    return Step::NeedInput;
                }
                let fresh = !tx.ready(done).is_empty();
                if tx.streams(self.settings.stream_threshold) && (fresh || done) {
                    Step::Stream(done)
                } else if done {
                    Step::Deliver
                } else {
                    Step::NeedInput
                }
            }
            State::DiscardData(receiver, _) | State::DiscardBdat { receiver, .. } => {
                let mut it = self.inbuf.iter();
                let done = receiver.ingest(&mut it);
                let consumed = self.inbuf.len() - it.as_slice().len();
                self.inbuf.advance(consumed);
                if !done {
                    return Step::NeedInput;
                }
                match std::mem::replace(&mut self.state, State::Command) {
                    State::DiscardData(_, reply) => self.end_discarded(reply),
                    State::DiscardBdat {
                        reply, abort: true, ..
                    } => self.end_discarded(reply),
                    State::DiscardBdat { reply, .. } => self.protocol_error(reply),
                    _ => unreachable!("matched above"),
                }
            }
            State::Bdat { receiver, left } => {
                let tx = self.transaction.as_mut().expect("BDAT has a transaction");
                if let Err(short) =
                    tx.make_room(self.inbuf.len().min(*left), self.settings.stream_threshold)
                {
                    if may_wait {
                        return Step::WaitForMemory(short);
                    }
                    let discard = DummyDataReceiver::new_bdat(*left);
                    tx.drop_body();
                    self.state = State::DiscardBdat {
                        receiver: discard,
                        reply: self.no_memory(),
                        abort: true,
                    };
                    return Step::Continue;
                }
                let mut it = self.inbuf.iter();
                let done = receiver.ingest(&mut it, &mut tx.body);
                let consumed = self.inbuf.len() - it.as_slice().len();
                self.inbuf.advance(consumed);
                *left -= consumed;
                if !done {
                    // A large chunk is sent on as it arrives, not held whole.
                    let fresh = !tx.ready(false).is_empty();
                    if fresh && tx.streams(self.settings.stream_threshold) {
                        return Step::Stream(false);
                    }
                    return Step::NeedInput;
                }
                let last = receiver.is_last;
                self.state = State::Command;
                if tx.streams(self.settings.stream_threshold) {
                    if !last {
                        let len = tx.message_len();
                        self.push(reply::chunk_ok(len));
                    }
                    Step::Stream(last)
                } else if last {
                    Step::Deliver
                } else {
                    let len = tx.message_len();
                    self.push(reply::chunk_ok(len));
                    Step::Continue
                }
            }
        }
    }

    /// The reply for a transaction the memory budget has no room for, logged for the
    /// operator (a sign that `max_memory` is too small for the load).
    fn no_memory(&self) -> Reply {
        tracing::warn!(
            client = %self.client.display(),
            used = self.memory.used(),
            max_memory = self.memory.limit(),
            memory_wait = ?self.settings.memory_wait,
            "memory budget exhausted (no room within memory_wait): the message gets 452"
        );
        reply::insufficient_storage()
    }

    /// Ends a transaction whose data was discarded, with `reply`.
    fn end_discarded(&mut self, reply: Reply) -> Step {
        count_transaction(reply.code);
        if let Some(tx) = self.transaction.take() {
            tracing::info!(
                client = %self.client.display(),
                from = %tx.envelope.sender,
                reply = %reply.to_string().trim_end(),
                "message refused"
            );
        }
        self.client.forwarded = ClientAttributes::default();
        self.state = State::Command;
        self.push(reply);
        Step::Continue
    }

    /// Counts an error reply; too many end the session.
    fn protocol_error(&mut self, reply: Reply) -> Step {
        self.push(reply);
        self.errors += 1;
        if self.errors >= self.settings.error_limit {
            tracing::warn!(client = %self.client.display(), errors = self.errors, "too many errors, disconnecting");
            self.push(reply::too_many_errors());
            return Step::Close;
        }
        Step::Continue
    }

    fn command_step(&mut self) -> Step {
        let line = match self.retry_line.take() {
            // A command that waited for memory is taken again (and again, if it waits again).
            Some(line) => line,
            None => {
                let Some(pos) = memchr::memchr(b'\n', &self.inbuf) else {
                    if self.inbuf.len() >= MAX_LINE {
                        self.inbuf.clear();
                        self.state = State::SkipLine;
                        return Step::Continue;
                    }
                    return Step::NeedInput;
                };
                let line = self.inbuf.split_to(pos + 1).freeze();
                if line.len() > MAX_LINE {
                    return self.protocol_error(reply::line_too_long());
                }
                line
            }
        };
        let step = self.command(line.clone());
        if matches!(step, Step::WaitForMemory(_)) {
            self.retry_line = Some(line);
        }
        step
    }

    fn command(&mut self, line: Bytes) -> Step {
        if xforward::is_xforward(&line) {
            return self.xforward(&line);
        }
        let request = match Request::parse(&mut line.iter()) {
            Ok(request) => request,
            Err(e) => return self.protocol_error(reply::for_parse_error(&e)),
        };
        match request {
            Request::Ehlo { host } => {
                self.reset();
                self.client.helo = Some(host.into_owned());
                self.out.extend_from_slice(&self.ehlo_response());
                Step::Continue
            }
            Request::Helo { host } => {
                self.reset();
                self.client.helo = Some(host.into_owned());
                self.push(reply::helo(&self.settings.hostname));
                Step::Continue
            }
            Request::Mail { from } => {
                if self.transaction.is_some() {
                    return self.protocol_error(reply::bad_sequence("nested MAIL command"));
                }
                if from.size > self.settings.max_message_size {
                    self.push(reply::too_big());
                    return Step::Continue;
                }
                let Some(sender) = mailbox(&from.address) else {
                    self.push(reply::sender_not_allowed());
                    return Step::Continue;
                };
                self.transaction = Some(Transaction {
                    envelope: Envelope {
                        sender,
                        declared_size: from.size,
                        mail_flags: from.flags,
                        env_id: from.env_id.map(|e| e.into_owned()),
                        recipients: Vec::new(),
                    },
                    body: Vec::new(),
                    body_start: 0,
                    chunking: false,
                    sending: Sending::Buffered,
                    streamed: 0,
                    data_deadline: None,
                    memory: self.memory.reservation(),
                    streaming_memory: 0,
                    spool: None,
                    memory_waited: std::time::Duration::ZERO,
                });
                self.push(reply::sender_ok());
                Step::Continue
            }
            Request::Rcpt { to } => self.rcpt(to),
            Request::Data => self.data(),
            Request::Bdat {
                chunk_size,
                is_last,
            } => self.bdat(chunk_size, is_last),
            Request::Rset => {
                self.reset();
                self.push(reply::ok());
                Step::Continue
            }
            Request::Noop { .. } => {
                self.push(reply::ok());
                Step::Continue
            }
            Request::Quit => {
                self.push(reply::bye());
                Step::Close
            }
            Request::Vrfy { .. } => {
                self.push(reply::cannot_vrfy());
                Step::Continue
            }
            Request::Help { .. } => {
                self.push(reply::help());
                Step::Continue
            }
            Request::Lhlo { .. }
            | Request::Auth { .. }
            | Request::Expn { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. }
            | Request::StartTls => self.protocol_error(reply::not_implemented()),
        }
    }

    /// Ends any transaction and forgets XFORWARD attributes (EHLO, HELO, RSET).
    fn reset(&mut self) {
        self.transaction = None;
        self.client.forwarded = ClientAttributes::default();
    }

    fn ehlo_response(&self) -> Vec<u8> {
        use smtp_proto::*;
        let mut ehlo = EhloResponse::new(self.settings.hostname.as_str());
        ehlo.capabilities = EXT_PIPELINING
            | EXT_SIZE
            | EXT_8BIT_MIME
            | EXT_ENHANCED_STATUS_CODES
            | EXT_SMTP_UTF8
            | EXT_DSN
            | EXT_CHUNKING;
        ehlo.size = self.settings.max_message_size;
        let mut buf = Vec::with_capacity(256);
        ehlo.write(&mut buf).expect("writing to a Vec cannot fail");
        if self.xforward_allowed {
            // smtp-proto has no XFORWARD capability: continue its last line and add ours.
            let last_line = buf[..buf.len() - 2]
                .windows(2)
                .rposition(|w| w == b"\r\n")
                .map_or(0, |p| p + 2);
            buf[last_line + 3] = b'-';
            buf.extend_from_slice(format!("250 XFORWARD {}\r\n", xforward::ATTRIBUTES).as_bytes());
        }
        buf
    }

    fn xforward(&mut self, line: &[u8]) -> Step {
        if !self.xforward_allowed {
            tracing::warn!(client = %self.client.display(), "XFORWARD refused: client not in xforward_networks");
            return self.protocol_error(reply::xforward_denied());
        }
        if self.transaction.is_some() {
            return self.protocol_error(reply::bad_sequence("MAIL transaction in progress"));
        }
        let Ok(text) = std::str::from_utf8(&line[8..]) else {
            return self.protocol_error(reply::syntax("XFORWARD attribute=value..."));
        };
        match self.client.forwarded.apply(text.trim()) {
            Ok(()) => {
                self.push(reply::ok());
                Step::Continue
            }
            Err(e) => self.protocol_error(reply::syntax(&e.to_string())),
        }
    }

    fn rcpt(&mut self, to: smtp_proto::RcptTo<std::borrow::Cow<'_, str>>) -> Step {
        let Some(tx) = self.transaction.as_mut() else {
            return self.protocol_error(reply::bad_sequence("need MAIL command"));
        };
        if tx.chunking {
            return self.protocol_error(reply::bad_sequence("RCPT after BDAT"));
        }
        if to.address.is_empty() {
            return self.protocol_error(reply::bad_recipient());
        }
        let Some(address) = mailbox(&to.address) else {
            self.push(reply::recipient_not_allowed());
            return Step::Continue;
        };
        let address = address.as_str();
        if tx.envelope.recipients.len() >= self.settings.max_recipients {
            self.push(reply::too_many_recipients());
            return Step::Continue;
        }
        let destination = match self.deliverer.route(address) {
            Route::Store(idx) => Some(idx),
            Route::Relay if self.relay_allowed => None,
            Route::Relay => {
                tracing::warn!(client = %self.client.display(), rcpt = address, "relay refused: client not in relay_networks");
                self.push(reply::relay_denied(address));
                return Step::Continue;
            }
            Route::Reject => {
                tracing::info!(client = %self.client.display(), rcpt = address, "recipient rejected: no destination");
                self.push(reply::unknown_recipient(address));
                return Step::Continue;
            }
        };
        tx.envelope.recipients.push(Recipient {
            address: address.to_string(),
            destination,
            notify: to.flags,
            orcpt: to.orcpt.as_ref().map(|o| o.to_string()),
        });
        self.push(reply::recipient_ok());
        Step::Continue
    }

    /// Room for the message at DATA: the announced SIZE, if any, within the limit. A size
    /// past `stream_threshold` gets the whole buffer the message will fill before it is
    /// sent on, never more.
    fn initial_capacity(&self, tx: &Transaction) -> usize {
        let threshold = self.settings.stream_threshold;
        let declared = tx
            .envelope
            .declared_size
            .min(self.settings.max_message_size);
        if declared > threshold {
            threshold.saturating_add(READ_SLACK)
        } else {
            declared.saturating_add(64)
        }
    }

    fn data(&mut self) -> Step {
        let Some(tx) = self.transaction.as_ref() else {
            return self.protocol_error(reply::bad_sequence("need MAIL command"));
        };
        if tx.chunking {
            return self.protocol_error(reply::bad_sequence("DATA after BDAT"));
        }
        if tx.envelope.recipients.is_empty() {
            return self.protocol_error(reply::no_valid_recipients());
        }
        let capacity = self.initial_capacity(tx);
        let tx = self.transaction.as_mut().expect("checked above");
        // A message announced past stream_threshold will stream: its upload parts are
        // reserved now too, so that once it got 354 it does not fail for memory halfway.
        if tx.envelope.declared_size > self.settings.stream_threshold {
            tx.streaming_memory = streaming_memory(&tx.envelope);
        }
        if let Err(short) = tx.make_room(capacity, self.settings.stream_threshold) {
            tx.streaming_memory = 0;
            if self.may_wait_for_memory() {
                return Step::WaitForMemory(short);
            }
            // The transaction stays: the client may try DATA again, or RSET.
            let reply = self.no_memory();
            self.push(reply);
            return Step::Continue;
        }
        tx.data_deadline = Some(tokio::time::Instant::now() + self.settings.data_timeout);
        let mut receiver = DataReceiver::new();
        // A fresh DataReceiver does not treat the start of data as the start of a line;
        // feeding it a CRLF first makes `.` handling on the first line correct.
        receiver.ingest(&mut b"\r\n".iter(), &mut tx.body);
        tx.body_start = tx.body.len();
        self.state = State::Data(receiver);
        self.push(reply::start_data());
        Step::Continue
    }

    fn bdat(&mut self, chunk_size: usize, is_last: bool) -> Step {
        let refusal = match self.transaction.as_ref() {
            None => Some(reply::bad_sequence("need MAIL command")),
            Some(tx) if tx.envelope.recipients.is_empty() => Some(reply::no_valid_recipients()),
            Some(tx)
                if tx.message_len().saturating_add(chunk_size) > self.settings.max_message_size =>
            {
                Some(reply::too_big())
            }
            Some(_) => None,
        };
        if let Some(reply) = refusal {
            // The chunk's bytes follow the command whatever the reply: read past them.
            let abort = reply.code == 552;
            self.state = State::DiscardBdat {
                receiver: DummyDataReceiver::new_bdat(chunk_size),
                reply,
                abort,
            };
            return Step::Continue;
        }
        let tx = self.transaction.as_mut().expect("checked above");
        if !tx.chunking {
            tx.chunking = true;
            tx.data_deadline = Some(tokio::time::Instant::now() + self.settings.data_timeout);
        }
        self.state = State::Bdat {
            receiver: BdatReceiver::new(chunk_size, is_last),
            left: chunk_size,
        };
        Step::Continue
    }

    /// Sends the buffered message bytes on to the stores (and the spool, for relayed
    /// recipients), starting the delivery the first time; `done` at the end of data. A
    /// failure is kept for the final reply; the rest of the data is then dropped.
    async fn stream_out(&mut self, done: bool) {
        let tx = self
            .transaction
            .as_mut()
            .expect("streaming has a transaction");
        if matches!(tx.sending, Sending::Buffered) {
            if let Err(e) = self.reserve_streaming().await {
                let tx = self.transaction.as_mut().expect("checked above");
                tx.sending = Sending::Failed(e);
            }
        }
        let tx = self.transaction.as_mut().expect("checked above");
        let ready = tx.ready(done);
        // Take the buffer rather than copy it: the next reads start a small one (with the
        // CR held back, if any).
        let mut body = std::mem::take(&mut tx.body);
        tx.body = body.split_off(ready.end);
        tx.body_start = 0;
        let bytes = &body[ready.start..];
        tx.streamed += bytes.len();
        if matches!(tx.sending, Sending::Buffered) {
            let sending = match self.begin_streaming(bytes) {
                Ok(delivery) => Sending::Streaming(delivery),
                Err(e) => Sending::Failed(e),
            };
            self.transaction.as_mut().expect("checked above").sending = sending;
        }
        let tx = self.transaction.as_mut().expect("checked above");
        let failed_before = matches!(tx.sending, Sending::Failed(_));
        if let (Sending::Streaming(_), Some(spool)) = (&tx.sending, &mut tx.spool) {
            if let Err(e) = spool.write(bytes).await {
                tx.sending = Sending::Failed(DeliveryError::Spool(e.to_string()));
            }
        }
        if let Sending::Streaming(delivery) = &mut tx.sending {
            if let Err(e) = delivery.stream(&self.deliverer, bytes).await {
                tx.sending = Sending::Failed(e);
            }
        }
        if let Sending::Failed(e) = &tx.sending {
            if !failed_before {
                tracing::warn!(client = %self.client.display(), error = %e, "streaming the message failed; the rest of its data is dropped");
            }
            // The dropped delivery takes back what it wrote, in the background.
            tx.spool = None;
            tx.streaming_memory = 0;
        }
        drop(body);
        tx.sync_memory();
    }

    /// Reserves what a message that begins to stream needs beside its buffer: its
    /// destinations' upload parts and the spool's buffers (already there when its SIZE
    /// announced it), waiting for room up to `memory_wait`.
    async fn reserve_streaming(&mut self) -> Result<(), DeliveryError> {
        loop {
            let tx = self
                .transaction
                .as_mut()
                .expect("streaming has a transaction");
            let needed = streaming_memory(&tx.envelope);
            // The buffer's floor while it streams too (a small stream_threshold may leave
            // the buffer below it).
            let target = tx
                .body
                .capacity()
                .max(STREAMING_BUFFER)
                .saturating_add(needed.max(tx.streaming_memory));
            match tx.memory.resize(target.max(tx.memory.bytes())) {
                Ok(()) => {
                    tx.streaming_memory = tx.streaming_memory.max(needed);
                    self.end_memory_wait();
                    return Ok(());
                }
                // A BDAT chunk's reply may be waiting to go out: sent before the wait, and
                // before the room it waits for is set aside (a client slow to read must not
                // hold others back). A client that is gone gets no reply: its next read ends
                // the session.
                Err(short) if self.may_wait_for_memory() => {
                    if self.flush().await.is_err() {
                        self.end_memory_wait();
                        return Err(DeliveryError::NoMemory);
                    }
                    if !self.may_wait_holding(short) {
                        self.end_memory_wait();
                        self.no_memory();
                        return Err(DeliveryError::NoMemory);
                    }
                    self.wait_for_memory(short).await;
                }
                Err(_) => {
                    self.end_memory_wait();
                    self.no_memory();
                    return Err(DeliveryError::NoMemory);
                }
            }
        }
    }

    /// Starts sending a message past `stream_threshold` on (its memory reserved by
    /// [`Self::reserve_streaming`]): opens the spool file when recipients are relayed,
    /// begins the writes.
    fn begin_streaming(&mut self, head: &[u8]) -> Result<Delivery, DeliveryError> {
        let tx = self
            .transaction
            .as_mut()
            .expect("streaming has a transaction");
        if tx.envelope.relayed().next().is_some() {
            let spool = Spool::create(&self.settings.spool_dir).map_err(|e| {
                DeliveryError::Spool(format!("in {}: {e}", self.settings.spool_dir.display()))
            })?;
            tx.spool = Some(spool);
        }
        Ok(self.deliverer.begin(&tx.envelope, &self.client, head))
    }

    /// Stores (and relays) the finished message and returns the final reply.
    async fn deliver(&mut self) -> Reply {
        self.state = State::Command;
        let tx = self
            .transaction
            .take()
            .expect("a finished message has a transaction");
        // XFORWARD attributes belong to this transaction only.
        let client = Client {
            forwarded: std::mem::take(&mut self.client.forwarded),
            ..self.client.clone()
        };
        let started = Instant::now();
        // The bytes stay reserved until the reply: the stores and the relay read them.
        let reservation = tx.memory;
        let rest = Bytes::from(tx.body).slice(tx.body_start..);
        let size = tx.streamed + rest.len();
        let delivery = match tx.sending {
            Sending::Failed(failure) => Err(failure),
            Sending::Streaming(delivery) => Ok(delivery),
            Sending::Buffered => {
                warn_about_line_endings(&rest);
                Ok(self.deliverer.begin(&tx.envelope, &client, &rest))
            }
        };
        let whole = match tx.spool {
            None => Ok(RelayBody::Memory(rest.clone())),
            Some(mut spool) => match spool.write(&rest).await {
                Ok(()) => Ok(RelayBody::Spooled(spool)),
                Err(e) => Err(DeliveryError::Spool(e.to_string())),
            },
        };
        let result = match (delivery, whole) {
            // Dropped here, a delivery takes back what it streamed, in the background.
            (Ok(_), _) if self.deliverer.is_closed() => Err(DeliveryError::ShuttingDown),
            (Ok(delivery), Ok(whole)) => {
                delivery
                    .finish(&self.deliverer, &tx.envelope, &client, rest, whole)
                    .await
            }
            (Err(failure), _) | (_, Err(failure)) => Err(failure),
        };
        drop(reservation);
        let elapsed_ms = started.elapsed().as_millis() as u64;
        metrics().smtp_received_bytes.inc_by(size as u64);
        count_transaction(match &result {
            Ok(delivered) => delivered.reply().code,
            Err(e) => e.reply().code,
        });
        let recipients: Vec<&str> = tx
            .envelope
            .recipients
            .iter()
            .map(|r| r.address.as_str())
            .collect();
        match result {
            Ok(delivered) => {
                let reply = delivered.reply();
                let keys: Vec<&str> = delivered.stored.iter().map(|o| o.key.as_str()).collect();
                tracing::info!(
                    client = %client.display(),
                    helo = client.helo.as_deref().unwrap_or(""),
                    from = %tx.envelope.sender,
                    to = list(&recipients),
                    size,
                    keys = list(&keys),
                    relayed = delivered.relayed.as_deref().unwrap_or(""),
                    store_ms = elapsed_ms,
                    reply = %reply.to_string().trim_end(),
                    "stored"
                );
                self.deliverer.announce(&delivered);
                reply
            }
            Err(e) => {
                let reply = e.reply();
                tracing::error!(
                    client = %client.display(),
                    helo = client.helo.as_deref().unwrap_or(""),
                    from = %tx.envelope.sender,
                    to = list(&recipients),
                    size,
                    store_ms = elapsed_ms,
                    error = %e,
                    reply = %reply.to_string().trim_end(),
                    "not stored"
                );
                reply
            }
        }
    }
}

/// What a streamed message holds besides its buffer: [`STREAM_MEMORY`] for each destination's
/// upload, and the spool's buffers when recipients are relayed.
fn streaming_memory(envelope: &Envelope) -> usize {
    let spool = if envelope.relayed().next().is_some() {
        SPOOL_MEMORY
    } else {
        0
    };
    STREAM_MEMORY
        .saturating_mul(envelope.by_destination().len())
        .saturating_add(spool)
}

/// Bare LF and NUL are stored unchanged (the bytes are the client's), but an operator
/// should know that such a message may confuse later readers.
fn warn_about_line_endings(message: &[u8]) {
    let lf = memchr::memchr_iter(b'\n', message).count();
    let crlf = memchr::memmem::find_iter(message, b"\r\n").count();
    if lf != crlf {
        tracing::warn!(
            bare_lf = lf - crlf,
            "message has bare LF line endings; stored unchanged"
        );
    }
    if memchr::memchr(0, message).is_some() {
        tracing::warn!("message contains NUL bytes; stored unchanged");
    }
}

/// Counts a transaction by the class of its end-of-data reply (a refused one too: too
/// large, no memory).
fn count_transaction(code: u16) {
    metrics()
        .smtp_transactions
        .get_or_create(&Kind {
            kind: reply_class(code),
        })
        .inc();
}
