//! The SMTP session target: a client's bytes in, the session's replies out, over an
//! in-memory pipe, with two destinations whose stores are object_store's `InMemory` (the
//! same writes a Maildir gets: create-only puts, renames from `tmp/`).
//!
//! The limits are small so that short inputs reach every road: 2 KiB of message streams
//! to the stores while it arrives, 64 KiB is too large, four recipients are the most, the
//! eighth error ends the session. `@alerts.test` and `@ops.test` are stored (a message to
//! both is staged, then moved), every other recipient is refused (no relay). XFORWARD is
//! trusted from the client's address, 127.0.0.1.
//!
//! An input that begins with `!F` and a byte `n` makes the stores fail their write
//! number `n % 16` (a put, the start, a part or the end of an upload, a copy or a rename,
//! counted over both stores), without effect: the rest of the input is the client's. So the roads of a failed write (`451`,
//! and taking back what the message's other writes made) are fuzzed too.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use futures::TryStreamExt;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::config::{Config, Router, ServerSettings};
use crate::filter::budget::MemoryBudget;
use crate::filter::deliver::Deliverer;
use crate::filter::reply::{MAX_LINE, STORED_AS};
use crate::filter::session::Session;
use crate::store::Destination;
use crate::store::key::MessageKey;

/// The prefix of an input that makes a store write fail (see the module docs).
const FAULT: &[u8] = b"!F";
/// How often the target lets background clean-up run before it looks for leftovers:
/// in-memory stores answer at once, so a few turns of the runtime are plenty.
const CLEANUP_TURNS: usize = 1000;

/// What one session answered, for a caller that wants to know which roads its inputs took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Answered {
    /// Objects stored (keys named by `250 ... stored as`).
    pub stored: usize,
    /// `451 4.x.x` replies: a write that failed, or a time limit.
    pub not_stored: usize,
}

/// The session's settings and destinations, made once; each run gets empty stores.
pub struct SmtpSession {
    settings: Arc<ServerSettings>,
    config: Config,
    destinations: Vec<Destination>,
}

impl Default for SmtpSession {
    fn default() -> Self {
        SmtpSession::new()
    }
}

impl SmtpSession {
    /// The settings described in the module docs.
    pub fn new() -> SmtpSession {
        // Destinations are opened as Maildirs (which makes their folders), then write to
        // memory instead: the folders are removed again at once.
        let root = std::env::temp_dir().join(format!("swiftdrop-fuzz-{}", std::process::id()));
        let path = |name: &str| root.join(name).to_string_lossy().into_owned();
        let vars = [
            ("SWIFTDROP_SERVER_HOSTNAME", "fuzz.test".to_string()),
            ("SWIFTDROP_SERVER_RELAY", "off".to_string()),
            ("SWIFTDROP_SERVER_MAX_MESSAGE_SIZE", "64KiB".to_string()),
            ("SWIFTDROP_SERVER_STREAM_THRESHOLD", "2KiB".to_string()),
            ("SWIFTDROP_SERVER_MAX_RECIPIENTS", "4".to_string()),
            ("SWIFTDROP_SERVER_ERROR_LIMIT", "8".to_string()),
            ("SWIFTDROP_ALERTS_RECIPIENTS", "@alerts.test".to_string()),
            ("SWIFTDROP_ALERTS_PATH", path("alerts")),
            ("SWIFTDROP_OPS_RECIPIENTS", "@ops.test".to_string()),
            ("SWIFTDROP_OPS_PATH", path("ops")),
        ];
        let config = Config::from_sources(None, vars.map(|(k, v)| (k.to_string(), v)))
            .expect("the fuzzing configuration is valid");
        let destinations = Destination::open_all(&config.destinations).expect("the Maildirs open");
        let _ = std::fs::remove_dir_all(&root);
        SmtpSession {
            settings: Arc::new(config.server.clone()),
            config,
            destinations,
        }
    }

    /// Runs one session on `input` (everything the client sends, then its end of stream)
    /// and checks the invariants:
    ///
    /// - the session ends without a panic;
    /// - every reply line is well-formed: three digits from 200 to 599, a space or `-`,
    ///   tab and printable ASCII only (nothing the client sent can start a line of its
    ///   own), at most 512 bytes with its CRLF; the lines of one reply share their code; the first
    ///   reply is the greeting and the last one is complete;
    /// - every `250 2.0.0 Ok: stored as <keys>` names objects that are in the stores under
    ///   `cur/`, whole (as long as the `S=` of their name, beginning with the filter's
    ///   `Return-Path:`), and the stores hold nothing else: no object without its `250`, no
    ///   staged copy left under `tmp/`.
    ///
    /// Returns what the session answered. Must run within a Tokio runtime (a current-thread
    /// one is enough).
    pub async fn run(&self, input: &[u8]) -> Answered {
        let (fail_at, input) = match input.strip_prefix(FAULT) {
            Some([n, rest @ ..]) => (Some(usize::from(*n) % 16), rest),
            _ => (None, input),
        };
        let writes = Arc::new(AtomicUsize::new(0));
        let destinations: Vec<Destination> = self
            .destinations
            .iter()
            .map(|d| {
                let store = FailingStore {
                    inner: Arc::new(InMemory::new()),
                    writes: writes.clone(),
                    fail_at,
                };
                d.clone().with_store(Arc::new(store))
            })
            .collect();
        let stores: Vec<Arc<dyn ObjectStore>> =
            destinations.iter().map(|d| d.store.clone()).collect();
        let deliverer = Arc::new(Deliverer::new(
            Router::new(&self.config.destinations),
            destinations,
            None,
            &self.settings.hostname,
            self.settings.store_timeout,
        ));
        let replies = self.converse(input, deliverer).await;
        let stored = check_replies(&replies);
        check_stores(&stores, &stored).await;
        Answered {
            stored: stored.len(),
            not_stored: replies.windows(6).filter(|w| w == b"\n451 4").count(),
        }
    }

    /// Sends `input` and reads every reply until the session closes the connection.
    async fn converse(&self, input: &[u8], deliverer: Arc<Deliverer>) -> Vec<u8> {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (_stop, stop) = watch::channel(false);
        let peer: SocketAddr = "127.0.0.1:40000".parse().expect("an address");
        let memory = MemoryBudget::new(self.settings.max_memory);
        let session = Session::new(server, peer, self.settings.clone(), deliverer, memory, stop);
        let (mut from_server, mut to_server) = tokio::io::split(client);
        let send = async {
            // The session may close before it read everything (too many errors, QUIT).
            if to_server.write_all(input).await.is_ok() {
                let _ = to_server.shutdown().await;
            }
        };
        let receive = async {
            let mut replies = Vec::new();
            let _ = from_server.read_to_end(&mut replies).await;
            replies
        };
        // One task, so that a panic in the session is the caller's panic.
        let (_, (), replies) = tokio::join!(session.run(), send, receive);
        replies
    }
}

/// Checks the form of every reply line; returns the keys the `250`s named as stored.
fn check_replies(replies: &[u8]) -> Vec<String> {
    let shown = String::from_utf8_lossy(replies);
    assert!(
        replies.ends_with(b"\r\n"),
        "the replies end with a whole line: {shown:?}"
    );
    let lines: Vec<&[u8]> = replies[..replies.len() - 2]
        .split(|&b| b == b'\n')
        .collect();
    assert!(
        lines[0].starts_with(b"220 "),
        "the first reply is the greeting: {shown:?}"
    );
    let mut stored = Vec::new();
    let mut open: Option<&[u8]> = None;
    for (i, line) in lines.iter().enumerate() {
        // Every line but the last lost its LF to the split: each must still end with CR.
        let line = if i + 1 < lines.len() {
            line.strip_suffix(b"\r")
                .unwrap_or_else(|| panic!("a bare LF in the replies: {shown:?}"))
        } else {
            line
        };
        let text = String::from_utf8_lossy(line);
        assert!(
            line.len() + 2 <= MAX_LINE,
            "a reply line of {} bytes: {text:?}",
            line.len() + 2
        );
        assert!(
            line.len() >= 4
                && line[..3].iter().all(u8::is_ascii_digit)
                && (b'2'..=b'5').contains(&line[0])
                && matches!(line[3], b' ' | b'-'),
            "a reply line without a code and separator: {text:?}"
        );
        assert!(
            line.iter()
                .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)),
            "a reply line with other than tab and printable ASCII: {text:?}"
        );
        if let Some(code) = open {
            assert_eq!(code, &line[..3], "one reply, one code: {shown:?}");
        }
        open = (line[3] == b'-').then(|| &line[..3]);
        if let Some(keys) = text
            .strip_prefix("250 2.0.0 ")
            .and_then(|t| t.strip_prefix(STORED_AS))
        {
            let keys = keys.split(';').next().unwrap_or_default();
            stored.extend(keys.split(' ').map(str::to_string));
        }
    }
    assert!(open.is_none(), "the last reply is complete: {shown:?}");
    stored
}

/// Checks that the stores hold exactly the objects named in `stored`, each whole.
async fn check_stores(stores: &[Arc<dyn ObjectStore>], stored: &[String]) {
    // A transaction cut off while it streamed is taken back in the background.
    let mut found = Vec::new();
    for turn in 0.. {
        found.clear();
        for store in stores {
            let listed: Vec<_> = store
                .list(None)
                .try_collect()
                .await
                .expect("an in-memory store lists");
            found.extend(listed.into_iter().map(|o| (store.clone(), o)));
        }
        let leftover = found
            .iter()
            .any(|(_, o)| !o.location.as_ref().starts_with("cur/"));
        if !leftover || turn == CLEANUP_TURNS {
            break;
        }
        tokio::task::yield_now().await;
    }
    let names: BTreeSet<&str> = found.iter().map(|(_, o)| o.location.as_ref()).collect();
    let confirmed: BTreeSet<&str> = stored.iter().map(String::as_str).collect();
    assert_eq!(
        names, confirmed,
        "the stores hold the objects a 250 named, and nothing else"
    );
    assert_eq!(names.len(), found.len(), "one object per key");
    for (store, object) in &found {
        let key = object.location.as_ref();
        let name = key.strip_prefix("cur/").unwrap_or(key);
        let size = MessageKey::parse(name)
            .unwrap_or_else(|| panic!("{key} is a Maildir name"))
            .size;
        let bytes = match store.get(&object.location).await {
            Ok(got) => got.bytes().await,
            Err(e) => Err(e),
        }
        .expect("a stored object reads");
        assert_eq!(bytes.len() as u64, size, "{key} is whole");
        assert!(
            bytes.starts_with(b"Return-Path: <"),
            "{key} begins with the envelope sender"
        );
    }
}

/// An in-memory store whose write number `fail_at` fails without effect.
#[derive(Debug)]
struct FailingStore {
    inner: Arc<dyn ObjectStore>,
    /// Writes so far, over every store of the run.
    writes: Arc<AtomicUsize>,
    fail_at: Option<usize>,
}

impl FailingStore {
    /// Counts a write; an error for the one that is to fail.
    fn write(&self) -> object_store::Result<()> {
        let number = self.writes.fetch_add(1, Ordering::Relaxed);
        if Some(number) == self.fail_at {
            return Err(object_store::Error::Generic {
                store: "fuzzing",
                source: format!("write {number} fails").into(),
            });
        }
        Ok(())
    }
}

impl fmt::Display for FailingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Failing({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FailingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.write()?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.write()?;
        let upload = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(FailingUpload {
            inner: upload,
            store: FailingStore {
                inner: self.inner.clone(),
                writes: self.writes.clone(),
                fail_at: self.fail_at,
            },
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.write()?;
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.write()?;
        self.inner.rename_opts(from, to, options).await
    }
}

/// An upload of a [`FailingStore`]: each part and the end count as writes.
#[derive(Debug)]
struct FailingUpload {
    inner: Box<dyn MultipartUpload>,
    store: FailingStore,
}

#[async_trait]
impl MultipartUpload for FailingUpload {
    fn put_part(&mut self, data: PutPayload) -> object_store::UploadPart {
        match self.store.write() {
            Ok(()) => self.inner.put_part(data),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        self.store.write()?;
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}
