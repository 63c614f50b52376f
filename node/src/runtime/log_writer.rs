//! The replica's log, written on a thread of its own. The protocol task hands over each step's
//! records and goes on with the next inputs; what a step sends is held in the [`Outbox`] until
//! every record handed over before it is on disk. While one group of records syncs, the next
//! groups gather, and the thread writes them together with one sync.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self as std_mpsc, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use pbft_crypto::PublicKey;
use pbft_net::ReplicaTransport;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::data_dir::DirLock;
use crate::metrics::Metrics;
use crate::storage::{ReplicaStore, StorageError};
use pbft_core::messages::{ReplicaId, SessionId};
use pbft_core::protocol::Durable;

/// Groups handed to the writer and not yet durable. At the bound the protocol task takes no
/// new input until the disk catches up.
const MAX_GROUPS_IN_FLIGHT: u64 = 64;

/// Bytes of frames held back for the disk. At the bound the protocol task takes no new input
/// until the disk catches up.
const MAX_HELD_BYTES: usize = 64 << 20;

/// A group of records handed to the writer: its number (counted from 1) and the records.
type Group = (u64, Vec<Durable>);

/// How far the log's thread has got. It never waits for the protocol task to read this, so the
/// protocol task may wait for the thread without the two waiting for each other.
#[derive(Default)]
struct Progress {
    /// The newest group that is durable.
    durable: AtomicU64,
    /// Why the thread stopped, once it has.
    failed: Mutex<Option<StorageError>>,
    changed: Notify,
}

impl Progress {
    fn fail(&self, error: StorageError) {
        *self.failed.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
        self.changed.notify_one();
    }
}

/// Reports a panic of the log's thread, which would otherwise leave held frames waiting forever.
struct ReportPanic(Arc<Progress>);

impl Drop for ReportPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.fail(StorageError::WriterGone);
        }
    }
}

/// The thread that writes the log, and how far it has got.
struct LogWriter {
    groups: std_mpsc::SyncSender<Group>,
    progress: Arc<Progress>,
    thread: std::thread::JoinHandle<()>,
    /// The newest group handed over.
    submitted: u64,
    /// The newest group known to be durable.
    durable: u64,
    disk_bytes: Arc<AtomicU64>,
}

impl LogWriter {
    /// Starts the thread. It owns the store and the data directory's lock, so the directory
    /// stays locked until the last write is done.
    fn spawn(
        replica: ReplicaId,
        mut store: ReplicaStore,
        lock: Option<DirLock>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<LogWriter> {
        let (groups, groups_rx) = std_mpsc::sync_channel::<Group>(MAX_GROUPS_IN_FLIGHT as usize);
        let progress = Arc::new(Progress::default());
        let disk_bytes = Arc::new(AtomicU64::new(store.disk_bytes()));
        let (reports, bytes) = (progress.clone(), disk_bytes.clone());
        let thread = std::thread::Builder::new()
            .name(format!("log-writer-{replica}"))
            .spawn(move || {
                let _lock = lock;
                let reports = ReportPanic(reports);
                while let Ok((mut newest, mut records)) = groups_rx.recv() {
                    while let Ok((number, more)) = groups_rx.try_recv() {
                        records.extend(more);
                        newest = number;
                    }
                    let started = std::time::Instant::now();
                    let written = store.persist(&records);
                    metrics.observe_persist(started.elapsed());
                    bytes.store(store.disk_bytes(), Ordering::Relaxed);
                    if let Err(error) = written {
                        reports.0.fail(error);
                        break;
                    }
                    reports.0.durable.store(newest, Ordering::Release);
                    reports.0.changed.notify_one();
                }
            })?;
        Ok(LogWriter {
            groups,
            progress,
            thread,
            submitted: 0,
            durable: 0,
            disk_bytes,
        })
    }

    fn in_flight(&self) -> u64 {
        self.submitted - self.durable
    }
}

/// Runs blocking work from the protocol task without stalling the other tasks of a
/// multi-threaded runtime.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// A frame the replica sends, which may have to wait for the log.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // boxing would allocate for every reply
pub(super) enum Outbound {
    Replica(ReplicaId, Bytes),
    Reply {
        client: PublicKey,
        session: SessionId,
        frame: Bytes,
        /// When the requests it answers arrived, for the latency histogram.
        arrived: Vec<Instant>,
    },
}

impl Outbound {
    fn len(&self) -> usize {
        match self {
            Outbound::Replica(_, frame) | Outbound::Reply { frame, .. } => frame.len(),
        }
    }

    /// Puts the frame on the wire.
    pub(super) fn deliver(self, transport: &ReplicaTransport, metrics: &Metrics) {
        match self {
            Outbound::Replica(id, frame) => transport.send_to_replica(id, frame),
            Outbound::Reply {
                client,
                session,
                frame,
                arrived,
            } => {
                for at in arrived {
                    metrics.observe_latency(at.elapsed());
                }
                transport.send_to_session(&client, session, frame);
            }
        }
    }
}

/// Where the protocol task's records and frames go: records to the log's thread, frames out
/// once every record handed over before them is durable.
pub(super) struct Outbox {
    writer: Option<LogWriter>,
    /// Frames waiting, each with the group that must be durable first, oldest first.
    held: VecDeque<(u64, Outbound)>,
    held_bytes: usize,
}

impl Outbox {
    /// An outbox that sends at once: durable state is off.
    pub(super) fn none() -> Outbox {
        Outbox {
            writer: None,
            held: VecDeque::new(),
            held_bytes: 0,
        }
    }

    /// An outbox writing to `store`, or sending at once when durable state is off.
    pub(super) fn new(
        replica: ReplicaId,
        store: Option<ReplicaStore>,
        lock: Option<DirLock>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Outbox> {
        let mut outbox = Outbox::none();
        if let Some(store) = store {
            outbox.writer = Some(LogWriter::spawn(replica, store, lock, metrics)?);
        }
        Ok(outbox)
    }

    /// Hands `records` to the log's thread. Every frame sent from now on waits for them.
    pub(super) fn persist(&mut self, records: Vec<Durable>) {
        let Some(writer) = &mut self.writer else {
            return;
        };
        if records.is_empty() {
            return;
        }
        writer.submitted += 1;
        match writer.groups.try_send((writer.submitted, records)) {
            // A thread that stopped has reported why, and the replica stops on it.
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            // Timers may add groups past the intake bound. A group is never dropped: its frames
            // would go out once a later group is durable. The protocol task waits instead.
            Err(TrySendError::Full(group)) => {
                let _ = blocking(|| writer.groups.send(group));
            }
        }
    }

    /// Whether the protocol task may take more input: the log is not too far behind.
    pub(super) fn has_room(&self) -> bool {
        self.held_bytes < MAX_HELD_BYTES
            && self
                .writer
                .as_ref()
                .is_none_or(|writer| writer.in_flight() < MAX_GROUPS_IN_FLIGHT)
    }

    /// Delivers `outbound` once every record handed over before it is durable: at once if
    /// nothing is in flight, else when [`Outbox::written`] reports its group.
    pub(super) fn send(&mut self, outbound: Outbound, deliver: impl FnOnce(Outbound)) {
        match &self.writer {
            Some(writer) if writer.in_flight() > 0 => {
                self.held_bytes += outbound.len();
                self.held.push_back((writer.submitted, outbound));
            }
            _ => deliver(outbound),
        }
    }

    /// Waits until the log reports progress, and delivers what it freed, in order. Never
    /// completes while nothing is in flight. An error is a failed write: the replica must stop,
    /// and nothing that waited for it is delivered.
    pub(super) async fn written(
        &mut self,
        mut deliver: impl FnMut(Outbound),
    ) -> Result<(), StorageError> {
        let Some(writer) = self.writer.as_mut().filter(|w| w.in_flight() > 0) else {
            return std::future::pending().await;
        };
        let durable = loop {
            let durable = writer.progress.durable.load(Ordering::Acquire);
            if durable > writer.durable {
                break durable;
            }
            let failed = writer.progress.failed.lock();
            let failed = failed.unwrap_or_else(PoisonError::into_inner).take();
            if let Some(error) = failed {
                return Err(error);
            }
            // A report made since the check above left a permit, so none is missed.
            writer.progress.changed.notified().await;
        };
        writer.durable = durable;
        while let Some((group, _)) = self.held.front() {
            if *group > durable {
                break;
            }
            let (_, outbound) = self.held.pop_front().expect("front exists");
            self.held_bytes -= outbound.len();
            deliver(outbound);
        }
        Ok(())
    }

    /// Bytes of the log on disk.
    pub(super) fn disk_bytes(&self) -> u64 {
        self.writer
            .as_ref()
            .map_or(0, |writer| writer.disk_bytes.load(Ordering::Relaxed))
    }

    /// Lets the log's thread finish what it was handed, and waits for it: only then is the
    /// data directory unlocked. Frames still held are dropped.
    pub(super) async fn close(mut self) {
        self.held.clear();
        let Some(writer) = self.writer.take() else {
            return;
        };
        let LogWriter { groups, thread, .. } = writer;
        drop(groups);
        let joined = tokio::task::spawn_blocking(move || thread.join()).await;
        if !matches!(joined, Ok(Ok(()))) {
            tracing::error!("the log's thread failed while stopping");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::ReplicaStore;

    fn outbox(dir: &std::path::Path, fail_first_write: bool) -> Outbox {
        let mut store = ReplicaStore::open(dir, false, 4).unwrap().store;
        if fail_first_write {
            store.fail_next_write();
        }
        Outbox::new(0, Some(store), None, Metrics::new()).unwrap()
    }

    fn frame(n: u8) -> Outbound {
        Outbound::Replica(1, Bytes::from(vec![n]))
    }

    fn record() -> Vec<Durable> {
        vec![Durable::Created { rejoining: false }]
    }

    fn sent(out: &Outbound) -> u8 {
        match out {
            Outbound::Replica(_, frame) => frame[0],
            Outbound::Reply { .. } => unreachable!("the tests send no replies"),
        }
    }

    #[tokio::test]
    async fn frames_wait_for_every_record_handed_over_before_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = outbox(dir.path(), false);
        let mut delivered = Vec::new();
        outbox.send(frame(1), |out| delivered.push(sent(&out)));
        assert_eq!(delivered, [1], "nothing in flight: out at once");

        outbox.persist(record());
        outbox.send(frame(2), |out| delivered.push(sent(&out)));
        outbox.persist(record());
        outbox.send(frame(3), |out| delivered.push(sent(&out)));
        assert_eq!(delivered, [1], "held while their records are in flight");

        while delivered.len() < 3 {
            outbox
                .written(|out| delivered.push(sent(&out)))
                .await
                .unwrap();
        }
        assert_eq!(delivered, [1, 2, 3], "released in order once durable");
        outbox.close().await;

        let reopened = ReplicaStore::open(dir.path(), false, 4).unwrap();
        assert_eq!(reopened.records, [record(), record()].concat());
    }

    #[tokio::test]
    async fn a_failed_write_is_reported_and_what_waited_for_it_never_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = outbox(dir.path(), true);
        let mut delivered = Vec::new();
        outbox.persist(record());
        outbox.send(frame(1), |out| delivered.push(sent(&out)));
        let result = outbox.written(|out| delivered.push(sent(&out))).await;
        assert!(matches!(result, Err(StorageError::Io { .. })), "{result:?}");
        assert!(delivered.is_empty());
        outbox.close().await;
    }

    #[tokio::test]
    async fn no_group_is_dropped_past_the_room_of_the_writers_queue() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = outbox(dir.path(), false);
        let groups = 4 * MAX_GROUPS_IN_FLIGHT;
        for _ in 0..groups {
            outbox.persist(record());
        }
        let mut delivered = Vec::new();
        outbox.send(frame(1), |out| delivered.push(sent(&out)));
        let released = async {
            while delivered.is_empty() {
                outbox
                    .written(|out| delivered.push(sent(&out)))
                    .await
                    .unwrap();
            }
        };
        // Generous: a lost group would hold the frame forever.
        tokio::time::timeout(std::time::Duration::from_secs(120), released)
            .await
            .expect("the frame is released once every group is durable");
        outbox.close().await;
        let reopened = ReplicaStore::open(dir.path(), false, 4).unwrap();
        assert_eq!(
            reopened.records.len() as u64,
            groups,
            "every group is in the log"
        );
    }

    #[tokio::test]
    async fn a_log_too_far_behind_stops_the_intake() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = outbox(dir.path(), false);
        for _ in 0..MAX_GROUPS_IN_FLIGHT {
            assert!(outbox.has_room());
            outbox.persist(record());
        }
        assert!(
            !outbox.has_room(),
            "{MAX_GROUPS_IN_FLIGHT} groups in flight"
        );
        while outbox.writer.as_ref().unwrap().in_flight() > 0 {
            outbox.written(|_| {}).await.unwrap();
        }
        assert!(outbox.has_room());
        outbox.close().await;
    }
}
