//! An HTTP/1.1 proxy in front of the test Swift that injects faults into the PUTs of
//! message objects (`/cur/` and `/tmp/` keys, S3's upload parts among them): a 500 answer,
//! a connection dropped halfway through the body, an ETag that is not the one Swift gave, no
//! answer at all, or a server-side copy held as a slow cluster would. Every other request
//! (auth, container checks, deletes, the native API's segments, which are under
//! `streamed/`) passes unchanged. One request per connection (`Connection: close` both
//! ways), so that each fault hits exactly one request. The auth answer's storage URL is rewritten to point at the proxy, so that the
//! native API's object requests pass through it too.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What happens to one PUT of a message object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Passed to Swift unchanged.
    Pass,
    /// Answered `500 Internal Server Error` by the proxy; Swift never sees it.
    Status500,
    /// Half the body goes to Swift, then both connections are dropped.
    DropMidBody,
    /// Passed to Swift, but the answer's ETag is replaced with one of zeros. As the fault
    /// for every later PUT, it also applies to HEADs and GETs of message objects: the
    /// store then never confirms the bytes sent (as when it damaged them).
    WrongEtag,
    /// Read, and never answered.
    Silence,
    /// Passed to Swift, which stores it; its answer is dropped with the connection.
    LoseAnswer,
    /// A server-side copy (a PUT with `X-Copy-From` or `x-amz-copy-source`) is held for
    /// [`HOLD`] before Swift sees it, as a slow cluster copying a large object would keep
    /// it, and dropped if the client gave up meanwhile. Other PUTs pass.
    HoldCopy,
    /// As `LoseAnswer`, but before the answer is dropped the stored object is moved from
    /// `cur/` to `processing/` (a server-side COPY, then a DELETE), as a worker's claim would.
    LoseAnswerAfterClaim,
}

/// How long [`Fault::HoldCopy`] holds a copy.
pub const HOLD: std::time::Duration = std::time::Duration::from_secs(4);

/// Faults for the message PUTs: `first` in order, then `then` for every later one.
struct Plan {
    first: VecDeque<Fault>,
    then: Fault,
    seen: usize,
    /// Copies held by [`Fault::HoldCopy`] and then passed on.
    held: usize,
    /// DELETEs of objects under this folder answered `500` by the proxy, and how many more.
    failing_deletes: Option<(String, usize)>,
    /// Server-side copies (PUTs with `X-Copy-From`) to this folder, how many more get a
    /// fault, and which.
    failing_copies: Option<(String, usize, Fault)>,
}

/// A running proxy; stopped when dropped.
pub struct FaultProxy {
    /// Where clients connect.
    pub port: u16,
    plan: Arc<Mutex<Plan>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// A proxy to the Swift on `upstream` (a port on loopback) that applies `first` to the
    /// first message PUTs, in order, and `then` to the rest.
    pub async fn start(upstream: u16, first: &[Fault], then: Fault) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let plan = Arc::new(Mutex::new(Plan {
            first: first.iter().copied().collect(),
            then,
            seen: 0,
            held: 0,
            failing_deletes: None,
            failing_copies: None,
        }));
        let shared = plan.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let plan = shared.clone();
                connections.spawn(async move {
                    if let Err(e) = proxy_one(client, upstream, port, &plan).await {
                        eprintln!("fault proxy: {e}");
                    }
                });
            }
        });
        FaultProxy { port, plan, task }
    }

    /// How many message PUTs arrived so far.
    pub fn puts_seen(&self) -> usize {
        self.plan.lock().unwrap().seen
    }

    /// Answers the next `count` DELETEs of objects under `folder/` with `500` (Swift never
    /// sees them), as a store failing for a moment would.
    pub fn fail_deletes(&self, folder: &str, count: usize) {
        self.plan.lock().unwrap().failing_deletes = Some((format!("/{folder}/"), count));
    }

    /// Applies `fault` to the next `count` server-side copies to objects under `folder/`
    /// (`Status500`: Swift never sees them; `WrongEtag`: Swift copies, the answer lies).
    pub fn fail_copies(&self, folder: &str, count: usize, fault: Fault) {
        self.plan.lock().unwrap().failing_copies = Some((format!("/{folder}/"), count, fault));
    }

    /// How many copies [`Fault::HoldCopy`] held and then passed to Swift.
    pub fn copies_held(&self) -> usize {
        self.plan.lock().unwrap().held
    }
}

/// Reads up to the end of an HTTP head; returns the head and the bytes read past it.
async fn read_head(io: &mut (impl AsyncRead + Unpin)) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        let mut chunk = [0u8; 8192];
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The head with `Connection: close` in place of any connection header, and each other
/// header line passed through `edit` (`None` drops it).
fn rewrite(head: &str, edit: impl Fn(&str) -> Option<String>) -> String {
    let mut lines = head.trim_end().split("\r\n");
    let mut out = format!("{}\r\n", lines.next().unwrap_or_default());
    for line in lines {
        let name = line
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if name == "connection" || name == "keep-alive" {
            continue;
        }
        if let Some(line) = edit(line) {
            out.push_str(&line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    out
}

/// Moves the object at `path` (`/v1/<account>/<container>/cur/<name>`) to
/// `processing/<name>@1` as a claim (under fencing number 1) does, with the auth token of the
/// request `head`.
async fn claim(upstream: u16, head: &str, path: &str) -> std::io::Result<()> {
    let token = head
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("x-auth-token"))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let container_and_object = path.splitn(4, '/').nth(3).unwrap_or_default();
    let destination = format!(
        "{}@1",
        container_and_object.replacen("/cur/", "/processing/", 1)
    );
    for request in [
        format!("COPY {path} HTTP/1.1\r\nDestination: {destination}\r\n"),
        format!("DELETE {path} HTTP/1.1\r\n"),
    ] {
        let mut swift = TcpStream::connect(("127.0.0.1", upstream)).await?;
        let request = format!(
            "{request}Host: 127.0.0.1\r\nX-Auth-Token: {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        swift.write_all(request.as_bytes()).await?;
        let (answer, _) = read_head(&mut swift).await?;
        assert!(answer.starts_with("HTTP/1.1 20"), "claim: {answer}");
    }
    Ok(())
}

fn content_length(head: &str) -> usize {
    head.split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

async fn proxy_one(
    mut client: TcpStream,
    upstream: u16,
    own_port: u16,
    plan: &Mutex<Plan>,
) -> std::io::Result<()> {
    let (head, mut body) = read_head(&mut client).await?;
    let length = content_length(&head);
    let mut request_line = head.split_whitespace();
    let (method, path) = (request_line.next(), request_line.next().unwrap_or_default());
    let message = path.contains("/cur/") || path.contains("/tmp/");
    let copy = head.split("\r\n").any(|line| {
        let name = line.split(':').next().unwrap_or_default();
        name.eq_ignore_ascii_case("x-copy-from") || name.eq_ignore_ascii_case("x-amz-copy-source")
    });
    let fault = {
        let mut plan = plan.lock().unwrap();
        match method {
            Some("PUT")
                if copy
                    && plan
                        .failing_copies
                        .as_ref()
                        .is_some_and(|(folder, left, _)| {
                            *left > 0 && path.contains(folder.as_str())
                        }) =>
            {
                let (_, left, fault) = plan.failing_copies.as_mut().unwrap();
                *left -= 1;
                *fault
            }
            Some("PUT") if message => {
                plan.seen += 1;
                let then = plan.then;
                plan.first.pop_front().unwrap_or(then)
            }
            Some("HEAD" | "GET") if message && plan.then == Fault::WrongEtag => Fault::WrongEtag,
            Some("DELETE") => match &mut plan.failing_deletes {
                Some((folder, left)) if *left > 0 && path.contains(folder.as_str()) => {
                    *left -= 1;
                    Fault::Status500
                }
                _ => Fault::Pass,
            },
            _ => Fault::Pass,
        }
    };
    if fault == Fault::HoldCopy && copy && body.len() >= length {
        // A copy has no body: anything read now is the client closing the connection.
        let mut probe = [0u8; 1];
        tokio::select! {
            _ = tokio::time::sleep(HOLD) => plan.lock().unwrap().held += 1,
            _ = client.read(&mut probe) => return Ok(()),
        }
    }
    if fault == Fault::Status500 || fault == Fault::Silence {
        while body.len() < length {
            let mut chunk = vec![0u8; 65536];
            let n = client.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            body.extend_from_slice(&chunk[..n]);
        }
        if fault == Fault::Silence {
            std::future::pending::<()>().await;
        }
        let answer =
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        client.write_all(answer.as_bytes()).await?;
        return client.shutdown().await;
    }
    let mut swift = TcpStream::connect(("127.0.0.1", upstream)).await?;
    swift
        .write_all(rewrite(&head, |l| Some(l.to_string())).as_bytes())
        .await?;
    let limit = if fault == Fault::DropMidBody {
        length / 2
    } else {
        length
    };
    let mut sent = body.len().min(limit);
    swift.write_all(&body[..sent]).await?;
    while sent < limit {
        let mut chunk = vec![0u8; 65536.min(limit - sent)];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        swift.write_all(&chunk[..n]).await?;
        sent += n;
    }
    if fault == Fault::DropMidBody {
        // Both ends see the connection go with the body half sent.
        return Ok(());
    }
    let (answer, rest) = read_head(&mut swift).await?;
    if fault == Fault::LoseAnswerAfterClaim && answer.starts_with("HTTP/1.1 201") {
        claim(upstream, &head, path).await?;
    }
    if matches!(fault, Fault::LoseAnswer | Fault::LoseAnswerAfterClaim) {
        return Ok(());
    }
    let swift_address = format!("127.0.0.1:{upstream}");
    let own_address = format!("127.0.0.1:{own_port}");
    let answer = rewrite(&answer, |line| {
        let name = line
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        match name.as_str() {
            "etag" if fault == Fault::WrongEtag => Some(format!("ETag: \"{}\"", "0".repeat(32))),
            "x-storage-url" => Some(line.replace(&swift_address, &own_address)),
            _ => Some(line.to_string()),
        }
    });
    client.write_all(answer.as_bytes()).await?;
    client.write_all(&rest).await?;
    let chunked = answer
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let no_body = method == Some("HEAD") || answer.starts_with("HTTP/1.1 204");
    if chunked {
        // Swift closes after the answer (Connection: close was asked for).
        tokio::io::copy(&mut swift, &mut client).await?;
    } else if !no_body {
        let left = content_length(&answer).saturating_sub(rest.len());
        tokio::io::copy(&mut (&mut swift).take(left as u64), &mut client).await?;
    }
    client.shutdown().await
}
