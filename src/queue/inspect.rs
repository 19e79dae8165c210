//! What an operator sees of a message (`swiftdrop queue show`, the admin web view): its
//! envelope, headers, text, record, lease, digests and the finished message it repeats
//! ([`Queue::inspect`]), or at a glance for a list ([`Queue::glance`]). Read-only.

use mail_parser::MessageParser;
use object_store::ObjectStoreExt;

use super::handle::{Digests, Queue, QueueError, StoredCopy};
use super::lock::{FinishedRef, Holder};
use super::record::CopyKey;
use crate::store::trace;

/// Bytes read of a message for its header section.
const HEAD_BYTES: u64 = 64 * 1024;

/// Everything [`Queue::inspect`] found about one message.
#[derive(Debug)]
pub struct Inspection {
    /// Its copies, the newest (highest-ranked) first; the others are left by an interrupted
    /// move or a paused worker.
    pub copies: Vec<StoredCopy>,
    /// The lease on it, if any.
    pub holder: Option<Holder>,
    /// Its SHA-256 and the digest duplicates are found by (`None` unless asked for: the
    /// whole message is read for them).
    pub digests: Option<Digests>,
    /// The finished message with the same dedup digest, if any (looked for with the
    /// digests).
    pub duplicate_of: Option<FinishedRef>,
    pub glance: Glance,
}

impl Inspection {
    /// The copy the queue acts on.
    pub fn newest(&self) -> &StoredCopy {
        &self.copies[0]
    }
}

/// A message at a glance: its envelope and header fields.
#[derive(Debug, Clone, Default)]
pub struct Glance {
    /// The envelope sender (the object's metadata, else the `Return-Path:` trace line).
    pub sender: Option<String>,
    /// The envelope recipients (metadata, else the `Delivered-To:` trace lines).
    pub recipients: Vec<String>,
    /// The header fields in order ([`header_fields`]).
    pub headers: Vec<(String, String)>,
    /// The object's metadata, sorted by name.
    pub metadata: Vec<(String, String)>,
}

impl Glance {
    /// The first header field called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Queue {
    /// Everything about the message `key` (with or without its state folder); its digests
    /// and the finished message it repeats only `with_digests` (they read all of it).
    pub async fn inspect(&self, key: &str, with_digests: bool) -> Result<Inspection, QueueError> {
        let copies = self.find(key).await?;
        let newest = &copies[0];
        let name = newest.key.name.clone();
        let (digests, duplicate_of) = if with_digests {
            let digests = self.digests(&newest.meta).await?;
            let duplicate_of = self.duplicate_of(&name, &digests.dedup).await?;
            (Some(digests), duplicate_of)
        } else {
            (None, None)
        };
        let holder = self.holder(&name).await?;
        let glance = self.glance_at(newest).await?;
        Ok(Inspection {
            copies,
            holder,
            digests,
            duplicate_of,
            glance,
        })
    }

    /// The copy at `key` and its envelope and header fields: two requests (its metadata,
    /// the first 64 KiB). `None` when it is gone.
    pub async fn glance(&self, key: &CopyKey) -> Result<Option<(StoredCopy, Glance)>, QueueError> {
        let Some(copy) = self.head(key).await? else {
            return Ok(None);
        };
        let glance = self.glance_at(&copy).await?;
        Ok(Some((copy, glance)))
    }

    /// The first `max` bytes of `copy` (all of a smaller message).
    pub async fn read_range(
        &self,
        copy: &StoredCopy,
        max: u64,
    ) -> Result<bytes::Bytes, QueueError> {
        let end = copy.meta.size.min(max);
        if end == 0 {
            return Ok(bytes::Bytes::new());
        }
        Ok(self
            .destination()
            .store
            .get_range(&copy.meta.location, 0..end)
            .await?)
    }

    async fn glance_at(&self, copy: &StoredCopy) -> Result<Glance, QueueError> {
        let head = self.read_range(copy, HEAD_BYTES).await?;
        let headers = header_fields(&head);
        let mut metadata: Vec<(String, String)> = copy
            .attributes
            .iter()
            .filter_map(|(k, v)| match k {
                object_store::Attribute::Metadata(k) => Some((k.to_string(), v.to_string())),
                _ => None,
            })
            .collect();
        metadata.sort();
        let meta = |k: &str| {
            copy.attributes
                .get(&object_store::Attribute::Metadata(k.to_string().into()))
                .map(|v| crate::store::metadata::decode(v))
        };
        // Objects of a remote store carry the envelope as metadata; a Maildir file has
        // only its trace lines.
        let traced = trace::envelope(&head);
        let sender = meta("sender").or(traced.sender);
        let raw_recipients = copy
            .attributes
            .get(&object_store::Attribute::Metadata("recipients".into()));
        let recipients = match raw_recipients {
            Some(list) => crate::store::metadata::recipients(list),
            None => traced.recipients,
        };
        Ok(Glance {
            sender,
            recipients,
            headers,
            metadata,
        })
    }
}

/// The header fields of a message, in order, as `(name, value)`: values unfolded, with
/// RFC 2047 encoded words decoded in `Subject`. Bytes that are not UTF-8 are replaced.
pub fn header_fields(message: &[u8]) -> Vec<(String, String)> {
    let Some(parsed) = MessageParser::default().parse_headers(message) else {
        return Vec::new();
    };
    parsed
        .headers()
        .iter()
        .map(|header| {
            let name = header.name.as_str().to_string();
            let raw = message
                .get(header.offset_start as usize..header.offset_end as usize)
                .unwrap_or_default();
            let value = if name.eq_ignore_ascii_case("subject") {
                parsed.subject().map(str::to_string)
            } else {
                None
            };
            let value = value.unwrap_or_else(|| unfold(&String::from_utf8_lossy(raw)));
            (name, value)
        })
        .collect()
}

/// One line from a folded header value.
fn unfold(value: &str) -> String {
    value
        .split(['\r', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_unfolded_and_subjects_decoded() {
        let message = b"Return-Path: <a@example.org>\r\nDelivered-To: ops@example.com\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nTo: x@example.com,\r\n  y@example.com\r\n\r\nbody\r\n";
        let fields = header_fields(message);
        assert_eq!(
            fields,
            vec![
                ("Return-Path".to_string(), "<a@example.org>".to_string()),
                ("Delivered-To".to_string(), "ops@example.com".to_string()),
                ("Subject".to_string(), "Grüße".to_string()),
                ("To".to_string(), "x@example.com, y@example.com".to_string()),
            ]
        );
        assert!(header_fields(b"").is_empty());
    }
}
