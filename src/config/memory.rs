//! The memory figures of one transaction: what `max_memory` is checked against at start,
//! and what the filter's memory budget reserves as a message arrives. They live here, on
//! the floor of both users, so that the check and the reservations cannot disagree.
//!
//! What is counted: a transaction's buffered message bytes (up to `stream_threshold`) and,
//! from when it begins to stream, the upload parts each destination holds
//! ([`STREAM_MEMORY`]) and, for relayed recipients, the spool's buffers ([`SPOOL_MEMORY`]).

/// What a transaction's buffer may hold beyond `stream_threshold`: the bytes of one read,
/// ingested before the buffer is sent on.
pub const READ_SLACK: usize = 64 * 1024;

/// Size of one part of a streamed upload: S3's minimum for all parts but the last.
pub const PART_SIZE: usize = 5 << 20;
/// Parts of one destination being sent at once.
pub const PARTS_IN_FLIGHT: usize = 2;
/// Memory one destination's streamed upload may hold: the part being filled and those
/// being sent.
pub const STREAM_MEMORY: usize = (PARTS_IN_FLIGHT + 1) * PART_SIZE;

/// What a streaming transaction keeps reserved for its buffer: two reads (each at most
/// [`READ_SLACK`]), through which the streamed bytes pass on to the stores.
pub const STREAMING_BUFFER: usize = 2 * READ_SLACK;

/// The unit of the relay spool's buffers: the file's own (tokio copies each write into it
/// for the blocking pool), the read buffer when sending, and the buffer before the socket.
pub const SPOOL_CHUNK: usize = 64 * 1024;
/// Memory one spooled relay holds in its buffers.
pub const SPOOL_MEMORY: usize = 3 * SPOOL_CHUNK;

/// The most one transaction reserves: its buffer up to `stream_threshold` plus two reads (a
/// read's slack past the threshold, with a margin; [`STREAMING_BUFFER`] while it streams),
/// and, when it begins to stream, the upload parts of each of its `destinations` (the buffer
/// is sent on into them) and the spool's buffers.
pub fn transaction_peak(stream_threshold: usize, destinations: usize) -> usize {
    stream_threshold
        .saturating_add(STREAMING_BUFFER)
        .saturating_add(destinations.saturating_mul(STREAM_MEMORY))
        .saturating_add(SPOOL_MEMORY)
}
