//! A recording SMTP receiver: it answers like a permissive server and keeps each
//! transaction's envelope and the exact bytes of its message (dot-stuffing undone), so that
//! tests can compare what arrived with what was sent byte for byte (smtp-sink's dumps turn
//! line endings into LF). A recipient whose address begins with `refused` is refused for
//! good (550); one beginning with `deferred` is refused for now (451) the first time, which
//! is kept as a transaction from `deferred:<address>` with no recipients. Stopped when
//! dropped.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// One received transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub from: String,
    pub to: Vec<String>,
    pub bytes: Vec<u8>,
}

pub struct SmtpRecorder {
    pub port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SmtpRecorder {
    pub async fn start() -> SmtpRecorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let kept = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let kept = kept.clone();
                tokio::spawn(async move {
                    let _ = conversation(socket, kept).await;
                });
            }
        });
        SmtpRecorder {
            port,
            received,
            task,
        }
    }

    /// What arrived so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits up to `PATIENCE` for `count` transactions; what arrived.
    pub async fn wait_for(&self, count: usize) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + crate::support::PATIENCE;
        while self.received().len() < count && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        self.received()
    }
}

impl Drop for SmtpRecorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn conversation(
    socket: tokio::net::TcpStream,
    kept: Arc<Mutex<Vec<Received>>>,
) -> std::io::Result<()> {
    let (read, mut write) = socket.into_split();
    let mut read = BufReader::new(read);
    write.write_all(b"220 recorder.test ESMTP\r\n").await?;
    let (mut from, mut to) = (String::new(), Vec::new());
    let mut line = Vec::new();
    loop {
        line.clear();
        if read.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let command = String::from_utf8_lossy(&line).trim_end().to_string();
        let upper = command.to_ascii_uppercase();
        let address = || {
            command
                .split_once(':')
                .map(|(_, a)| {
                    a.trim()
                        .trim_start_matches('<')
                        .split('>')
                        .next()
                        .unwrap_or("")
                        .to_string()
                })
                .unwrap_or_default()
        };
        if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            write
                .write_all(b"250-recorder.test\r\n250-8BITMIME\r\n250 SIZE 0\r\n")
                .await?;
        } else if upper.starts_with("MAIL FROM:") {
            from = address();
            to.clear();
            write.write_all(b"250 2.1.0 Ok\r\n").await?;
        } else if upper.starts_with("RCPT TO:") {
            let rcpt = address();
            let deferred_before = kept
                .lock()
                .unwrap()
                .iter()
                .any(|r| r.from == format!("deferred:{rcpt}"));
            if rcpt.starts_with("refused") {
                write.write_all(b"550 5.1.1 No such user\r\n").await?;
            } else if rcpt.starts_with("deferred") && !deferred_before {
                // Deferred once, then taken: noted as a transaction of its own.
                kept.lock().unwrap().push(Received {
                    from: format!("deferred:{rcpt}"),
                    to: Vec::new(),
                    bytes: Vec::new(),
                });
                write.write_all(b"451 4.2.0 Try again later\r\n").await?;
            } else {
                to.push(rcpt);
                write.write_all(b"250 2.1.5 Ok\r\n").await?;
            }
        } else if upper == "DATA" {
            write
                .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                .await?;
            let mut bytes = Vec::new();
            loop {
                line.clear();
                if read.read_until(b'\n', &mut line).await? == 0 {
                    return Ok(());
                }
                if line == b".\r\n" {
                    break;
                }
                let unstuffed = if line.starts_with(b".") {
                    &line[1..]
                } else {
                    &line[..]
                };
                bytes.extend_from_slice(unstuffed);
            }
            kept.lock().unwrap().push(Received {
                from: from.clone(),
                to: to.clone(),
                bytes,
            });
            write.write_all(b"250 2.0.0 Ok: queued\r\n").await?;
        } else if upper == "QUIT" {
            write.write_all(b"221 2.0.0 Bye\r\n").await?;
            return Ok(());
        } else {
            write.write_all(b"250 2.0.0 Ok\r\n").await?;
        }
    }
}
