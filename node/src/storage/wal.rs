//! The segmented write-ahead log: framing, recovery and segment management.

use pbft_core::protocol::segment_released;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The first four bytes of every frame. Recovery looks for them when it decides whether a bad
/// frame is a torn tail or is followed by more valid frames.
pub(super) const FRAME_MAGIC: [u8; 4] = [0xF7, 0x57, 0x4C, 0x31];

/// Magic, payload length and payload checksum.
pub(super) const HEADER_LEN: usize = 12;

const SEGMENT_PREFIX: &str = "segment-";
const SEGMENT_SUFFIX: &str = ".wal";
const SEGMENT_DIGITS: usize = 20;

/// How a [`Wal`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalOptions {
    /// Whether [`Wal::sync`] waits for the data to reach the disk. Without it a crash of the
    /// machine (not just the process) can lose records that `sync` reported written; only tests
    /// and throwaway clusters should turn it off.
    pub fsync: bool,
    /// How far past the start of the next segment the stable point must move before a segment is
    /// deleted, so a replica keeps what it signed for a while after a checkpoint.
    pub retain_window: u64,
}

/// The bytes cut off the end of the newest segment at open, because the last write was torn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscardedTail {
    /// The segment file that was truncated.
    pub path: PathBuf,
    /// Where the first bad frame started, and the file's length now.
    pub offset: u64,
    /// How many bytes were dropped.
    pub bytes: u64,
}

/// A log opened by [`Wal::open`], with what it held.
#[derive(Debug)]
pub struct Opened {
    /// The log, positioned to append after the last good record.
    pub wal: Wal,
    /// Every record of every segment, in write order.
    pub records: Vec<Vec<u8>>,
    /// Set when a torn last write was cut off the newest segment.
    pub discarded_tail: Option<DiscardedTail>,
}

/// The largest write buffer kept for the next write; a larger one (a base of a large state)
/// is freed.
const MAX_SPARE_BYTES: usize = 16 << 20;

/// Why the log cannot be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An operating system call failed.
    #[error("cannot {op} {}: {source}", .path.display())]
    Io {
        /// What was being done: `write`, `fsync`, `create`.
        op: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A segment holds a bad frame that is not a torn last write: records after it would be
    /// lost, so the log is refused rather than silently shortened.
    #[error("corrupt write-ahead log {} at offset {offset}: {reason}", .path.display())]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Where the bad frame starts.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A record passed its checksum but is not a record this version writes: written by another
    /// version, or damaged in a way the checksum missed. Either way it is not to be trusted.
    #[error("record {index} of the write-ahead log in {} does not decode: {reason}", .dir.display())]
    Undecodable {
        /// The log's directory.
        dir: PathBuf,
        /// The record's position among all records, from 0.
        index: usize,
        reason: String,
    },
    /// An earlier write or fsync failed. The file may end in a partial frame, and frames
    /// written after it would be unreadable, so the log accepts nothing more.
    #[error("the write-ahead log is unusable after an earlier write failure")]
    Poisoned,
    /// The thread writing the log ended without saying why (it panicked).
    #[error("the thread writing the log stopped")]
    WriterGone,
    /// A record is longer than a frame's length field can describe.
    #[error(
        "a record of {len} bytes is longer than the {} bytes a frame can hold",
        u32::MAX
    )]
    RecordTooLarge {
        /// The record's length.
        len: usize,
    },
}

#[derive(Debug)]
struct Segment {
    start: u64,
    path: PathBuf,
}

/// Frames waiting for [`Wal::sync`], all for the segment starting at `start`.
#[derive(Debug)]
struct Pending {
    start: u64,
    frames: Vec<u8>,
}

/// An append-only log of records in segment files. See the [module docs](super) for the format.
///
/// Appends are buffered in memory until [`Wal::sync`]; dropping a `Wal` discards what was not
/// synced.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    options: WalOptions,
    /// The segments on disk, oldest first.
    segments: Vec<Segment>,
    /// An append handle on the newest segment on disk.
    newest: Option<File>,
    /// The start of the segment that the next append goes to. It may not exist on disk yet.
    head: u64,
    pending: Vec<Pending>,
    /// The buffer of the last write, emptied, for the next one: a new buffer would grow through
    /// every size again, on newly faulted pages.
    spare: Vec<u8>,
    poisoned: bool,
    fail_next_write: bool,
    bytes_written: u64,
    syncs: u64,
}

impl Wal {
    /// Creates `dir` if missing, reads every segment in ascending order and returns all records
    /// in write order.
    ///
    /// A torn last write in the newest segment is cut off (the file is truncated, so later
    /// appends follow the last good frame) and reported in [`Opened::discarded_tail`]. Any other
    /// bad frame is [`StorageError::Corrupt`].
    pub fn open(dir: &Path, options: WalOptions) -> Result<Opened, StorageError> {
        fs::create_dir_all(dir).map_err(io_error("create directory", dir))?;
        let segments = list_segments(dir)?;
        let mut records = Vec::new();
        let mut discarded_tail = None;
        let mut newest = None;
        for (index, segment) in segments.iter().enumerate() {
            let is_newest = index + 1 == segments.len();
            let data = fs::read(&segment.path).map_err(io_error("read", &segment.path))?;
            let scan = scan_frames(&data);
            records.extend(scan.payloads.into_iter().map(|range| data[range].to_vec()));
            if is_newest {
                newest = Some(
                    OpenOptions::new()
                        .append(true)
                        .open(&segment.path)
                        .map_err(io_error("open", &segment.path))?,
                );
            }
            let Some((offset, reason)) = scan.bad else {
                continue;
            };
            if let Some(next) = find_valid_frame(&data, offset + 1) {
                return Err(StorageError::Corrupt {
                    path: segment.path.clone(),
                    offset: offset as u64,
                    reason: format!("{reason}, and a valid frame follows at offset {next}"),
                });
            }
            let Some(file) = newest.as_mut().filter(|_| is_newest) else {
                return Err(StorageError::Corrupt {
                    path: segment.path.clone(),
                    offset: offset as u64,
                    reason: format!("{reason}, in a segment that is not the newest"),
                });
            };
            let dropped = (data.len() - offset) as u64;
            tracing::warn!(
                path = %segment.path.display(),
                offset,
                dropped,
                %reason,
                "discarding a torn write at the end of the write-ahead log"
            );
            file.set_len(offset as u64)
                .map_err(io_error("truncate", &segment.path))?;
            if options.fsync {
                file.sync_data().map_err(io_error("fsync", &segment.path))?;
            }
            discarded_tail = Some(DiscardedTail {
                path: segment.path.clone(),
                offset: offset as u64,
                bytes: dropped,
            });
        }
        let head = segments.last().map_or(0, |segment| segment.start);
        let wal = Wal {
            dir: dir.to_path_buf(),
            options,
            segments,
            newest,
            head,
            pending: Vec::new(),
            spare: Vec::new(),
            poisoned: false,
            fail_next_write: false,
            bytes_written: 0,
            syncs: 0,
        };
        Ok(Opened {
            wal,
            records,
            discarded_tail,
        })
    }

    /// Buffers one record; nothing touches the disk until [`Wal::sync`].
    pub fn append(&mut self, record: &[u8]) -> Result<(), StorageError> {
        self.append_with(|frames| frames.extend_from_slice(record))
    }

    /// Buffers one record that `write` appends to the given buffer, so a large record is
    /// encoded straight into the frames waiting for [`Wal::sync`] instead of being copied there.
    pub fn append_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) -> Result<(), StorageError> {
        if self.poisoned {
            return Err(StorageError::Poisoned);
        }
        let pending = match self.pending.last_mut() {
            Some(pending) if pending.start == self.head => pending,
            _ => {
                self.pending.push(Pending {
                    start: self.head,
                    frames: std::mem::take(&mut self.spare),
                });
                // Just pushed, so the vector is not empty.
                let last = self.pending.len() - 1;
                &mut self.pending[last]
            }
        };
        let frames = &mut pending.frames;
        let start = frames.len();
        frames.extend_from_slice(&[0; HEADER_LEN]);
        write(frames);
        let payload = start + HEADER_LEN;
        let len = match payload_len(frames.len() - payload) {
            Ok(len) => len,
            Err(error) => {
                frames.truncate(start);
                return Err(error);
            }
        };
        let crc = crc32fast::hash(&frames[payload..]);
        frames[start..start + 4].copy_from_slice(&FRAME_MAGIC);
        frames[start + 4..start + 8].copy_from_slice(&len.to_le_bytes());
        frames[start + 8..payload].copy_from_slice(&crc.to_le_bytes());
        Ok(())
    }

    /// Sends records appended after this to a new segment whose name carries `start`, so that
    /// [`Wal::release`] can later delete the older segments whole.
    ///
    /// `start` must not decrease across calls. A `start` equal to the current segment's keeps
    /// the current segment. The file is created by the first [`Wal::sync`] that has a record for
    /// it, so rotating without appending creates no empty files.
    pub fn rotate(&mut self, start: u64) {
        if start > self.head {
            self.head = start;
        } else if start < self.head {
            tracing::warn!(
                start,
                current = self.head,
                "write-ahead log rotation to an earlier start ignored"
            );
        }
    }

    /// Writes the buffered records, one write per segment touched, and with
    /// [`WalOptions::fsync`] waits for each file written (and the directory, when a segment was
    /// created) to reach the disk. Returns at once when nothing is buffered.
    ///
    /// After a failure the log is poisoned: this and [`Wal::release`] return
    /// [`StorageError::Poisoned`] from then on.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        if self.poisoned {
            return Err(StorageError::Poisoned);
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        match self.write_pending(&pending) {
            Ok(()) => {
                self.syncs += 1;
                if let Some(mut frames) = pending.into_iter().map(|p| p.frames).next() {
                    if frames.capacity() <= MAX_SPARE_BYTES {
                        frames.clear();
                        self.spare = frames;
                    }
                }
                Ok(())
            }
            Err(error) => {
                self.poisoned = true;
                Err(error)
            }
        }
    }

    fn write_pending(&mut self, pending: &[Pending]) -> Result<(), StorageError> {
        let mut created = false;
        for group in pending {
            let path = segment_path(&self.dir, group.start);
            if std::mem::take(&mut self.fail_next_write) {
                return Err(StorageError::Io {
                    op: "write",
                    path,
                    source: io::Error::other("injected write failure"),
                });
            }
            let reuse = self.newest.is_some()
                && self.segments.last().map(|segment| segment.start) == Some(group.start);
            let file = match self.newest.as_mut() {
                Some(file) if reuse => file,
                _ => {
                    // `start` only grows, so this name is new; refusing an existing file keeps
                    // records of another log from being mixed in.
                    let file = OpenOptions::new()
                        .append(true)
                        .create_new(true)
                        .open(&path)
                        .map_err(io_error("create", &path))?;
                    tracing::debug!(path = %path.display(), "created write-ahead log segment");
                    self.segments.push(Segment {
                        start: group.start,
                        path: path.clone(),
                    });
                    created = true;
                    self.newest.insert(file)
                }
            };
            file.write_all(&group.frames)
                .map_err(io_error("write", &path))?;
            self.bytes_written += group.frames.len() as u64;
            if self.options.fsync {
                file.sync_data().map_err(io_error("fsync", &path))?;
            }
        }
        if created && self.options.fsync {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Deletes the segments no longer needed: a segment other than the newest on disk is deleted
    /// once `stable >= start of the next segment + retain_window`.
    pub fn release(&mut self, stable: u64) -> Result<(), StorageError> {
        if self.poisoned {
            return Err(StorageError::Poisoned);
        }
        let mut removed = false;
        while let [oldest, next, ..] = self.segments.as_slice() {
            if !segment_released(next.start, stable, self.options.retain_window) {
                break;
            }
            match fs::remove_file(&oldest.path) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    self.poisoned = true;
                    return Err(StorageError::Io {
                        op: "delete",
                        path: oldest.path.clone(),
                        source,
                    });
                }
            }
            tracing::debug!(path = %oldest.path.display(), stable, "deleted write-ahead log segment");
            self.segments.remove(0);
            removed = true;
        }
        if removed && self.options.fsync {
            if let Err(error) = sync_dir(&self.dir) {
                self.poisoned = true;
                return Err(error);
            }
        }
        Ok(())
    }

    /// Bytes of the segment files on disk (a file that cannot be read counts as empty).
    pub fn disk_bytes(&self) -> u64 {
        (self.segments.iter())
            .filter_map(|segment| fs::metadata(&segment.path).ok())
            .map(|metadata| metadata.len())
            .sum()
    }

    /// Bytes written to segment files by this `Wal` since it was opened.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Successful [`Wal::sync`] calls that had something to write.
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    /// Whether an earlier failure made the log refuse further writes.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// The directory holding the segments.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes the next [`Wal::sync`] that has something to write fail as a disk error would,
    /// poisoning the log, so callers can test how they stop on a disk error.
    #[doc(hidden)]
    pub fn fail_next_write(&mut self) {
        self.fail_next_write = true;
    }
}

/// The frame length field for a payload of `len` bytes.
pub(super) fn payload_len(len: usize) -> Result<u32, StorageError> {
    u32::try_from(len).map_err(|_| StorageError::RecordTooLarge { len })
}

fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StorageError + 'a {
    move |source| StorageError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn segment_path(dir: &Path, start: u64) -> PathBuf {
    dir.join(format!(
        "{SEGMENT_PREFIX}{start:0width$}{SEGMENT_SUFFIX}",
        width = SEGMENT_DIGITS
    ))
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix(SEGMENT_PREFIX)?
        .strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_DIGITS || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segment files in `dir`, oldest first.
fn list_segments(dir: &Path) -> Result<Vec<Segment>, StorageError> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error("list directory", dir))? {
        let entry = entry.map_err(io_error("list directory", dir))?;
        let Some(start) = entry.file_name().to_str().and_then(parse_segment_name) else {
            continue;
        };
        let file_type = entry.file_type().map_err(io_error("stat", &entry.path()))?;
        if !file_type.is_file() {
            continue;
        }
        segments.push(Segment {
            start,
            path: entry.path(),
        });
    }
    segments.sort_by_key(|segment| segment.start);
    Ok(segments)
}

/// Makes the creation or deletion of files in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|file| file.sync_all())
        .map_err(io_error("fsync directory", dir))
}

struct Scan {
    /// Where each good frame's payload lies.
    payloads: Vec<Range<usize>>,
    /// The offset of the first bad frame, and what is wrong with it.
    bad: Option<(usize, String)>,
}

/// Reads frames from the start of `data` up to the end or the first bad frame.
fn scan_frames(data: &[u8]) -> Scan {
    let mut payloads = Vec::new();
    let mut offset = 0;
    while offset < data.len() {
        match parse_frame(data, offset) {
            Ok(payload) => {
                offset = payload.end;
                payloads.push(payload);
            }
            Err(reason) => {
                return Scan {
                    payloads,
                    bad: Some((offset, reason)),
                }
            }
        }
    }
    Scan {
        payloads,
        bad: None,
    }
}

/// Checks the frame at `offset` and returns where its payload lies. The length field is checked
/// against the bytes actually present before anything is sliced, so a corrupt length cannot make
/// recovery allocate or read out of bounds.
fn parse_frame(data: &[u8], offset: usize) -> Result<Range<usize>, String> {
    let rest = data.get(offset..).unwrap_or_default();
    let Some((header, body)) = rest.split_first_chunk::<HEADER_LEN>() else {
        return Err(format!("incomplete frame header ({} bytes)", rest.len()));
    };
    let [m0, m1, m2, m3, l0, l1, l2, l3, c0, c1, c2, c3] = *header;
    if [m0, m1, m2, m3] != FRAME_MAGIC {
        return Err("bad frame magic".to_owned());
    }
    let len = u32::from_le_bytes([l0, l1, l2, l3]);
    let Some(payload) = usize::try_from(len).ok().and_then(|len| body.get(..len)) else {
        return Err(format!(
            "frame length {len} runs past the end of the file ({} bytes left)",
            body.len()
        ));
    };
    let expected = u32::from_le_bytes([c0, c1, c2, c3]);
    let actual = crc32fast::hash(payload);
    if actual != expected {
        return Err(format!(
            "checksum mismatch (stored {expected:#010x}, computed {actual:#010x})"
        ));
    }
    let start = offset + HEADER_LEN;
    Ok(start..start + payload.len())
}

/// The first offset at or after `from` holding a valid frame.
fn find_valid_frame(data: &[u8], from: usize) -> Option<usize> {
    let last = data.len().checked_sub(HEADER_LEN)?;
    (from..=last).find(|&offset| {
        data.get(offset..offset + FRAME_MAGIC.len()) == Some(&FRAME_MAGIC[..])
            && parse_frame(data, offset).is_ok()
    })
}
