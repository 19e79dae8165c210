//! The whole message for the relay, which needs it from its first byte after the stores
//! have theirs: held in memory while it is small ([`RelayBody::Memory`]), and in an
//! unlinked temporary file once it passes `stream_threshold` ([`Spool`]), so that a large
//! relayed message costs disk, not memory. The file has no name from the moment it is
//! made: a crash leaves nothing behind.
//!
//! [`write_data`] sends either to the downstream as SMTP DATA content, dot-stuffed from
//! the first byte.

use std::io::SeekFrom;
use std::path::Path;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt, BufWriter};

use crate::config::memory::SPOOL_CHUNK as CHUNK;

/// A message's bytes in an unlinked file under the spool directory.
#[derive(Debug)]
pub struct Spool {
    file: tokio::fs::File,
    len: u64,
}

impl Spool {
    /// An empty spool file in `dir` (removed from the directory at once).
    pub fn create(dir: &Path) -> std::io::Result<Spool> {
        let mut file = tokio::fs::File::from_std(tempfile::tempfile_in(dir)?);
        // tokio's default keeps up to 2 MiB per file, unreserved.
        file.set_max_buf_size(CHUNK);
        Ok(Spool { file, len: 0 })
    }

    /// Appends `bytes`.
    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all(bytes).await?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Bytes written.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The whole message, as the relay sends it.
#[derive(Debug)]
pub enum RelayBody {
    /// Held in memory (at most `stream_threshold`).
    Memory(Bytes),
    /// Spooled to disk.
    Spooled(Spool),
}

impl RelayBody {
    /// The message's size in bytes.
    pub fn len(&self) -> u64 {
        match self {
            RelayBody::Memory(bytes) => bytes.len() as u64,
            RelayBody::Spooled(spool) => spool.len(),
        }
    }

    /// Whether the message is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Writes `body` to `out` as DATA content: every line that begins with `.` gets another
/// one (the first line included: a lone dot there would end the data early and let the
/// rest be read as commands), then the end of data. A message that does not end with CRLF
/// gets one before the final dot, as it must.
pub async fn write_data<W: AsyncWrite + Unpin>(
    out: &mut W,
    body: &mut RelayBody,
) -> std::io::Result<()> {
    // Stuffed dots would otherwise go out as tiny writes of their own.
    let mut out = BufWriter::with_capacity(CHUNK, out);
    let mut stuffer = DotStuffer::default();
    match body {
        RelayBody::Memory(bytes) => stuffer.write(&mut out, bytes).await?,
        RelayBody::Spooled(spool) => {
            let file = &mut spool.file;
            file.flush().await?;
            file.seek(SeekFrom::Start(0)).await?;
            let mut chunk = vec![0; CHUNK];
            loop {
                let n = file.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                stuffer.write(&mut out, &chunk[..n]).await?;
            }
        }
    }
    out.write_all(stuffer.end_of_data()).await?;
    out.flush().await
}

/// SMTP transparency (RFC 5321 4.5.2) over a message sent in pieces: a dot that begins a
/// line is doubled, whichever piece it falls in.
#[derive(Debug)]
struct DotStuffer {
    /// The next byte begins a line.
    line_start: bool,
    /// The last two bytes written.
    tail: [u8; 2],
    /// Bytes written.
    written: usize,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer {
            line_start: true,
            tail: [0; 2],
            written: 0,
        }
    }
}

impl DotStuffer {
    async fn write<W: AsyncWrite + Unpin>(
        &mut self,
        out: &mut W,
        piece: &[u8],
    ) -> std::io::Result<()> {
        let mut from = 0;
        for (i, &byte) in piece.iter().enumerate() {
            if byte == b'.' && self.line_start {
                // Everything up to the dot, then the dot again: the dot itself starts the
                // next stretch.
                out.write_all(&piece[from..i]).await?;
                out.write_all(b".").await?;
                from = i;
            }
            self.line_start = byte == b'\n';
        }
        out.write_all(&piece[from..]).await?;
        self.written += piece.len();
        match piece {
            [] => {}
            [last] => self.tail = [self.tail[1], *last],
            [.., a, b] => self.tail = [*a, *b],
        }
        Ok(())
    }

    /// What ends the data: the final dot line, after a CRLF if the message lacks one at its
    /// end (an empty message needs none).
    fn end_of_data(&self) -> &'static [u8] {
        if self.written == 0 || &self.tail == b"\r\n" {
            b".\r\n"
        } else {
            b"\r\n.\r\n"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn data_of(pieces: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut stuffer = DotStuffer::default();
        for piece in pieces {
            stuffer.write(&mut out, piece).await.unwrap();
        }
        out.extend_from_slice(stuffer.end_of_data());
        out
    }

    #[tokio::test]
    async fn dots_are_stuffed_at_every_line_start_across_pieces() {
        assert_eq!(data_of(&[b"a\r\n"]).await, b"a\r\n.\r\n");
        assert_eq!(
            data_of(&[b"..\r\nMAIL FROM:<x>\r\n"]).await,
            b"...\r\nMAIL FROM:<x>\r\n.\r\n"
        );
        // A line start at the end of one piece, its dot at the start of the next.
        assert_eq!(data_of(&[b"a\r\n", b".b\r\n"]).await, b"a\r\n..b\r\n.\r\n");
        assert_eq!(
            data_of(&[b"a\r", b"\n", b".", b"\r\n"]).await,
            b"a\r\n..\r\n.\r\n"
        );
        // A dot inside a line is left alone; no final CRLF gets one.
        assert_eq!(data_of(&[b"a.b"]).await, b"a.b\r\n.\r\n");
        assert_eq!(data_of(&[]).await, b".\r\n");
    }

    #[tokio::test]
    async fn a_spooled_message_is_sent_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::create(dir.path()).unwrap();
        let line = b".dot line\r\n".repeat(20_000);
        spool.write(&line).await.unwrap();
        spool.write(b"last\r\n").await.unwrap();
        assert_eq!(spool.len(), line.len() as u64 + 6);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "the file has no name"
        );
        let mut out = Vec::new();
        write_data(&mut out, &mut RelayBody::Spooled(spool))
            .await
            .unwrap();
        let expected = [b"..dot line\r\n".repeat(20_000), b"last\r\n.\r\n".to_vec()].concat();
        assert_eq!(out, expected);
    }
}
