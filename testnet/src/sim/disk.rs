//! A simulated replica's disk, and the effects of its steps: records persisted (or cut short by
//! a crash in the middle of a write), sends and replies collected for the simulation to carry out.

use std::sync::Arc;

use pbft_core::byzantine::{Payload, RawEffects};
use pbft_core::driver::Effects;
use pbft_core::messages::{Message, ReplicaId, Reply};
use pbft_core::protocol::{newest_base, release_point, segment_released, Durable};
use pbft_crypto::Digest;

/// A replica's durable records, kept as the real store keeps them: a new segment at each
/// stable checkpoint, and old segments released by the same rule.
#[derive(Default)]
pub(super) struct SimDisk {
    segments: Vec<(u64, Vec<Durable>)>,
}

impl SimDisk {
    pub(super) fn write(&mut self, records: &[Durable], log_window: u64) {
        let mut stable = None;
        for record in records {
            if let Durable::Stable { seq, .. } = record {
                if self.segments.last().is_none_or(|(start, _)| start < seq) {
                    self.segments.push((*seq, Vec::new()));
                }
                stable = Some(*seq);
            }
            if self.segments.is_empty() {
                self.segments.push((0, Vec::new()));
            }
            if let Some((_, segment)) = self.segments.last_mut() {
                segment.push(record.clone());
            }
        }
        if let Some(stable) = stable {
            let base = newest_base(self.segments.iter().flat_map(|(_, records)| records));
            let release = release_point(stable, base, log_window);
            while self.segments.len() >= 2
                && segment_released(self.segments[1].0, release, log_window)
            {
                self.segments.remove(0);
            }
        }
    }

    pub(super) fn records(&self) -> Vec<Durable> {
        self.segments
            .iter()
            .flat_map(|(_, records)| records.iter().cloned())
            .collect()
    }
}

/// A replica crashed in the middle of a write.
pub(super) struct Crashed;

/// Where a simulated replica's effects go: its disk, and lists the simulation carries out after
/// the flush (the network draws from the same generator as the behaviour, so it waits).
pub(super) struct SimEffects<'a> {
    pub(super) id: ReplicaId,
    pub(super) disk: &'a mut SimDisk,
    pub(super) crash_in_write: &'a mut Option<f64>,
    pub(super) log_window: u64,
    pub(super) sends: Vec<(Vec<ReplicaId>, Payload)>,
    pub(super) replies: Vec<Reply>,
    /// The checkpoints the replica signed, for the checker.
    pub(super) checkpoints: Vec<(u64, Digest)>,
}

impl RawEffects for SimEffects<'_> {
    fn send_raw(&mut self, to: &[ReplicaId], bytes: Vec<u8>) {
        self.sends.push((to.to_vec(), Payload::Garbage(bytes)));
    }
}

impl Effects for SimEffects<'_> {
    type Error = Crashed;

    fn persist(&mut self, records: Vec<Durable>) -> Result<(), Crashed> {
        if let Some(kept) = self.crash_in_write.take() {
            let keep = ((records.len() as f64) * kept) as usize;
            self.disk.write(&records[..keep], self.log_window);
            tracing::debug!(
                replica = self.id,
                keep,
                of = records.len(),
                "crashed during a write"
            );
            return Err(Crashed);
        }
        self.disk.write(&records, self.log_window);
        self.checkpoints
            .extend(records.iter().filter_map(|record| match record {
                Durable::Checkpoint(c) => Some((c.seq, c.state_digest)),
                _ => None,
            }));
        Ok(())
    }

    fn send(&mut self, to: &[ReplicaId], message: Arc<Message>) {
        self.sends.push((to.to_vec(), Payload::Message(message)));
    }

    fn reply(&mut self, reply: Reply) {
        self.replies.push(reply);
    }
}
