//! Length-delimited frames on a QUIC stream, the hello exchange, and bounded send queues.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use quinn::{RecvStream, SendStream, VarInt};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Semaphore};

use crate::stats::{bump, Counters};
use crate::TransportConfig;

/// Written by the dialer on its stream right after the handshake.
pub(crate) const HELLO: [u8; 8] = *b"pbft1-hi";
/// Written back by the acceptor once it has authenticated the dialer.
pub(crate) const ACK: [u8; 8] = *b"pbft1-ok";

/// Application close codes.
pub(crate) const CLOSE_SHUTDOWN: VarInt = VarInt::from_u32(0);
pub(crate) const CLOSE_PROTOCOL: VarInt = VarInt::from_u32(1);
pub(crate) const CLOSE_FRAME_TOO_LARGE: VarInt = VarInt::from_u32(2);
pub(crate) const CLOSE_REPLACED: VarInt = VarInt::from_u32(3);
pub(crate) const CLOSE_EVICTED: VarInt = VarInt::from_u32(4);
pub(crate) const CLOSE_BANNED: VarInt = VarInt::from_u32(5);
pub(crate) const CLOSE_TOO_SLOW: VarInt = VarInt::from_u32(6);

/// The most bytes read from a stream beyond the frame being assembled.
const READ_CHUNK: usize = 64 << 10;
/// Client frames up to this long are assembled without taking room from [`Assembly`]: each
/// connection holds at most one, so the connection limits bound them, and small requests never
/// wait behind large frames that are slow to arrive or never finish.
pub(crate) const UNMETERED_FRAME: usize = 64 << 10;
/// Frames up to this size are copied into one buffer with their headers; larger ones are
/// written as their own chunk without copying.
const COALESCE: usize = 4 << 10;
/// The most queued frames written in one go.
pub(crate) const WRITE_BATCH: usize = 64;

#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    Oversized { len: usize, max: usize },
    #[error("stream ended inside a frame")]
    Truncated,
    #[error("a frame took longer than {0:?} to arrive")]
    TooSlow(std::time::Duration),
    #[error(transparent)]
    Read(#[from] quinn::ReadError),
}

/// Limits on frames being assembled from clients: room for all of them together (those longer
/// than [`UNMETERED_FRAME`]), and a deadline for each once its first byte arrived, so that
/// connections sending large frames slowly, or never finishing them, neither pin memory nor
/// hold the room for long.
#[derive(Clone, Debug)]
pub(crate) struct Assembly {
    pub(crate) room: ByteBudget,
    pub(crate) deadline: Duration,
}

/// Reads frames from a stream, holding at most one frame plus [`READ_CHUNK`] bytes.
pub(crate) struct FrameReader {
    stream: RecvStream,
    buf: BytesMut,
    max_frame: usize,
    assembly: Option<Assembly>,
    /// The length of the frame in progress whose room is taken.
    reserved: Option<usize>,
    /// When the frame in progress began to arrive.
    started: Option<Instant>,
}

impl FrameReader {
    pub(crate) fn new(stream: RecvStream, max_frame: usize, assembly: Option<Assembly>) -> Self {
        FrameReader {
            stream,
            buf: BytesMut::new(),
            max_frame,
            assembly,
            reserved: None,
            started: None,
        }
    }

    /// When the frame in progress must have arrived, and the allowance it was given.
    fn deadline(&self) -> Option<(Instant, Duration)> {
        let assembly = self.assembly.as_ref()?;
        Some((self.started? + assembly.deadline, assembly.deadline))
    }

    /// The next frame, or `None` when the peer finished the stream between frames.
    pub(crate) async fn next(&mut self) -> Result<Option<Bytes>, FrameError> {
        loop {
            if !self.buf.is_empty() && self.started.is_none() {
                self.started = Some(Instant::now());
            }
            let mut want = 4;
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
                let len = len as usize;
                if len > self.max_frame {
                    return Err(FrameError::Oversized {
                        len,
                        max: self.max_frame,
                    });
                }
                if let (Some(assembly), None, true) =
                    (&self.assembly, self.reserved, len > UNMETERED_FRAME)
                {
                    in_time(self.deadline(), assembly.room.take(len)).await?;
                    self.reserved = Some(len);
                }
                if self.buf.len() >= 4 + len {
                    self.release();
                    self.started = None;
                    self.buf.advance(4);
                    return Ok(Some(self.buf.split_to(len).freeze()));
                }
                want = 4 + len;
            }
            let missing = want - self.buf.len();
            let deadline = self.deadline();
            let read = self.stream.read_chunk(missing.max(READ_CHUNK), true);
            match in_time(deadline, read).await?? {
                // The buffer grows with the data that arrived, never to a claimed length.
                Some(chunk) => self.buf.extend_from_slice(&chunk.bytes),
                None if self.buf.is_empty() => return Ok(None),
                None => return Err(FrameError::Truncated),
            }
        }
    }

    /// Gives back the room of the frame in progress.
    fn release(&mut self) {
        if let (Some(assembly), Some(len)) = (&self.assembly, self.reserved.take()) {
            assembly.room.give_back(len);
        }
    }
}

/// Waits for `work`, until `deadline` if there is one.
async fn in_time<T>(
    deadline: Option<(Instant, Duration)>,
    work: impl Future<Output = T>,
) -> Result<T, FrameError> {
    match deadline {
        Some((at, allowance)) => tokio::time::timeout_at(at.into(), work)
            .await
            .map_err(|_| FrameError::TooSlow(allowance)),
        None => Ok(work.await),
    }
}

impl Drop for FrameReader {
    fn drop(&mut self) {
        self.release();
    }
}

/// Writes `frames` with their length prefixes. Every frame must fit in a `u32` length.
pub(crate) async fn write_frames(
    stream: &mut SendStream,
    frames: &[Bytes],
) -> Result<(), quinn::WriteError> {
    let mut chunks = Vec::with_capacity(frames.len() + 1);
    let mut small = BytesMut::new();
    for frame in frames {
        let len = u32::try_from(frame.len()).expect("frame sizes are checked when queued");
        small.put_u32(len);
        if frame.len() <= COALESCE {
            small.put_slice(frame);
        } else {
            chunks.push(small.split().freeze());
            chunks.push(frame.clone());
        }
    }
    if !small.is_empty() {
        chunks.push(small.freeze());
    }
    stream.write_all_chunks(&mut chunks).await
}

/// The sending side of one destination's queue: at most [`TransportConfig::queue_capacity`]
/// frames and a number of bytes ([`TransportConfig::queue_bytes`] to a replica,
/// [`TransportConfig::client_queue_bytes`] to a client; a larger frame is taken only into an
/// empty queue), so a peer that does not read pins a bounded amount of memory.
pub(crate) struct FrameQueue {
    frames: mpsc::Sender<Bytes>,
    bytes: Arc<AtomicUsize>,
    max_bytes: usize,
    max_frame: usize,
}

/// The receiving side of a [`FrameQueue`].
pub(crate) struct QueuedFrames {
    frames: mpsc::Receiver<Bytes>,
    bytes: Arc<AtomicUsize>,
}

/// A queue for one destination of `cfg.queue_capacity` frames and `max_bytes` bytes.
pub(crate) fn frame_queue(cfg: &TransportConfig, max_bytes: usize) -> (FrameQueue, QueuedFrames) {
    let (tx, rx) = mpsc::channel(cfg.queue_capacity);
    let bytes = Arc::new(AtomicUsize::new(0));
    let queue = FrameQueue {
        frames: tx,
        bytes: bytes.clone(),
        max_bytes,
        max_frame: cfg.max_frame(),
    };
    (queue, QueuedFrames { frames: rx, bytes })
}

impl FrameQueue {
    /// Queues `frame` without waiting: oversized frames and frames for a full queue are dropped
    /// and counted. Returns whether the frame was queued.
    pub(crate) fn push(&self, frame: Bytes, counters: &Counters) -> bool {
        let len = frame.len();
        if len > self.max_frame {
            bump(&counters.rejected_oversized_out, 1);
            return false;
        }
        let before = self.bytes.fetch_add(len, Ordering::AcqRel);
        if before > 0 && before + len > self.max_bytes {
            self.bytes.fetch_sub(len, Ordering::AcqRel);
            bump(&counters.dropped_queue_full, 1);
            return false;
        }
        match self.frames.try_send(frame) {
            Ok(()) => true,
            Err(error) => {
                self.bytes.fetch_sub(len, Ordering::AcqRel);
                match error {
                    mpsc::error::TrySendError::Full(_) => bump(&counters.dropped_queue_full, 1),
                    mpsc::error::TrySendError::Closed(_) => {
                        bump(&counters.dropped_not_connected, 1)
                    }
                }
                false
            }
        }
    }
}

impl QueuedFrames {
    /// Appends up to `limit` waiting frames to `batch`, waiting for at least one; 0 once the
    /// sending side is gone.
    pub(crate) async fn recv_many(&mut self, batch: &mut Vec<Bytes>, limit: usize) -> usize {
        let start = batch.len();
        let n = self.frames.recv_many(batch, limit).await;
        let taken: usize = batch[start..].iter().map(Bytes::len).sum();
        self.bytes.fetch_sub(taken, Ordering::AcqRel);
        n
    }
}

/// Bytes of received frames that may wait for the caller; taken before a frame is handed on
/// and given back when the caller takes it. A frame larger than the whole budget takes all of it.
#[derive(Clone, Debug)]
pub(crate) struct ByteBudget {
    available: Arc<Semaphore>,
    total: usize,
}

impl ByteBudget {
    pub(crate) fn new(total: usize) -> ByteBudget {
        let total = total.clamp(1, u32::MAX as usize);
        ByteBudget {
            available: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    fn cost(&self, len: usize) -> u32 {
        // `total` fits in a u32 (see `new`).
        len.clamp(1, self.total) as u32
    }

    /// Waits until `len` bytes may be buffered and takes them.
    pub(crate) async fn take(&self, len: usize) {
        if let Ok(permit) = self.available.acquire_many(self.cost(len)).await {
            permit.forget();
        }
    }

    /// Gives back what [`ByteBudget::take`] took for a frame of `len` bytes.
    pub(crate) fn give_back(&self, len: usize) {
        self.available.add_permits(self.cost(len) as usize);
    }
}
