use std::fs;
use std::path::{Path, PathBuf};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::wal::{payload_len, FRAME_MAGIC, HEADER_LEN};
use super::{DiscardedTail, Opened, StorageError, Wal, WalOptions};

const DURABLE: WalOptions = WalOptions {
    fsync: true,
    retain_window: 0,
};
const FAST: WalOptions = WalOptions {
    fsync: false,
    retain_window: 0,
};

/// Records of varied lengths, including an empty one, none containing the frame magic.
fn record(i: usize) -> Vec<u8> {
    if i == 3 {
        return Vec::new();
    }
    format!("record {i} ").repeat(1 + i % 5).into_bytes()
}

fn records(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(record).collect()
}

fn open(dir: &Path, options: WalOptions) -> Opened {
    match Wal::open(dir, options) {
        Ok(opened) => opened,
        Err(error) => panic!("open failed: {error}"),
    }
}

fn write_all(wal: &mut Wal, records: &[Vec<u8>]) {
    for record in records {
        wal.append(record).unwrap();
    }
    wal.sync().unwrap();
}

/// Segment starts and paths in `dir`, oldest first.
fn segment_files(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut files: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter_map(|path| {
            let name = path.file_name()?.to_str()?;
            let start = name.strip_prefix("segment-")?.strip_suffix(".wal")?;
            Some((start.parse().ok()?, path))
        })
        .collect();
    files.sort();
    files
}

fn only_segment(dir: &Path) -> PathBuf {
    let files = segment_files(dir);
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].1.clone()
}

/// The offset at which each record's frame starts, plus the end of the last one.
fn frame_offsets(records: &[Vec<u8>]) -> Vec<u64> {
    let mut offsets = vec![0];
    for record in records {
        offsets.push(offsets.last().unwrap() + (HEADER_LEN + record.len()) as u64);
    }
    offsets
}

/// A directory holding one segment with `records`.
fn log_with(records: &[Vec<u8>]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open(dir.path(), FAST).wal;
    write_all(&mut wal, records);
    let path = only_segment(dir.path());
    (dir, path)
}

fn flip_bit(path: &Path, offset: u64, mask: u8) {
    let mut data = fs::read(path).unwrap();
    data[offset as usize] ^= mask;
    fs::write(path, data).unwrap();
}

fn expect_corrupt(result: Result<Opened, StorageError>) -> (PathBuf, u64) {
    match result {
        Err(StorageError::Corrupt { path, offset, .. }) => (path, offset),
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok(opened) => panic!("expected Corrupt, opened {} records", opened.records.len()),
    }
}

#[test]
fn frame_layout_on_disk() {
    let (_dir, path) = log_with(&[b"hello".to_vec()]);
    let data = fs::read(path).unwrap();
    let mut expected = FRAME_MAGIC.to_vec();
    expected.extend_from_slice(&5u32.to_le_bytes());
    expected.extend_from_slice(&crc32fast::hash(b"hello").to_le_bytes());
    expected.extend_from_slice(b"hello");
    assert_eq!(data, expected);
}

#[test]
fn round_trip_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut wanted = records(6);
    wanted.push(vec![0xAB; 4096]);
    let opened = open(dir.path(), DURABLE);
    assert!(opened.records.is_empty());
    assert_eq!(opened.discarded_tail, None);
    let mut wal = opened.wal;
    // Nothing buffered: no write, no count.
    wal.sync().unwrap();
    assert_eq!(wal.syncs(), 0);
    write_all(&mut wal, &wanted[..4]);
    write_all(&mut wal, &wanted[4..]);
    assert_eq!(wal.syncs(), 2);
    assert_eq!(wal.bytes_written(), *frame_offsets(&wanted).last().unwrap());
    drop(wal);

    let segments = segment_files(dir.path());
    assert_eq!(segments.len(), 1);
    assert!(segments[0].1.ends_with("segment-00000000000000000000.wal"));
    let opened = open(dir.path(), DURABLE);
    assert_eq!(opened.records, wanted);
    assert_eq!(opened.discarded_tail, None);
}

#[test]
fn open_creates_missing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a").join("wal");
    let mut wal = open(&nested, DURABLE).wal;
    write_all(&mut wal, &records(2));
    assert_eq!(open(&nested, DURABLE).records, records(2));
}

#[test]
fn appends_stay_in_memory_until_sync() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open(dir.path(), FAST).wal;
    wal.append(b"unsynced").unwrap();
    assert!(segment_files(dir.path()).is_empty());
    drop(wal);
    assert!(open(dir.path(), FAST).records.is_empty());
}

#[test]
fn appends_after_reopen_continue_the_same_segment() {
    let dir = tempfile::tempdir().unwrap();
    let all = records(5);
    write_all(&mut open(dir.path(), DURABLE).wal, &all[..3]);
    let path = only_segment(dir.path());
    let opened = open(dir.path(), DURABLE);
    assert_eq!(opened.records, all[..3]);
    let mut wal = opened.wal;
    write_all(&mut wal, &all[3..]);
    assert_eq!(only_segment(dir.path()), path);
    assert_eq!(open(dir.path(), DURABLE).records, all);
}

#[test]
fn rotate_and_release_follow_the_retain_rule() {
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions {
        fsync: true,
        retain_window: 10,
    };
    let all = records(8);
    let mut wal = open(dir.path(), options).wal;
    write_all(&mut wal, &all[0..2]);
    wal.rotate(100);
    wal.append(&all[2]).unwrap();
    // Equal start keeps the current segment.
    wal.rotate(100);
    wal.append(&all[3]).unwrap();
    // Rotations with nothing appended create no files.
    wal.rotate(150);
    wal.rotate(200);
    wal.append(&all[4]).unwrap();
    wal.append(&all[5]).unwrap();
    // One sync spanning two segments.
    wal.rotate(300);
    wal.append(&all[6]).unwrap();
    wal.sync().unwrap();
    let starts = |dir: &Path| -> Vec<u64> {
        segment_files(dir)
            .into_iter()
            .map(|(start, _)| start)
            .collect()
    };
    assert_eq!(starts(dir.path()), [0, 100, 200, 300]);

    // Segment 0 goes once stable >= 100 + 10.
    wal.release(109).unwrap();
    assert_eq!(starts(dir.path()), [0, 100, 200, 300]);
    wal.release(110).unwrap();
    assert_eq!(starts(dir.path()), [100, 200, 300]);
    // Segment 100 goes at 210, segment 200 not before 310.
    wal.release(250).unwrap();
    assert_eq!(starts(dir.path()), [200, 300]);
    drop(wal);

    let opened = open(dir.path(), options);
    assert_eq!(opened.records, all[4..7]);
    let mut wal = opened.wal;
    // The newest segment is never deleted, and appends continue in it.
    wal.release(u64::MAX).unwrap();
    assert_eq!(starts(dir.path()), [300]);
    write_all(&mut wal, &all[7..]);
    assert_eq!(starts(dir.path()), [300]);
    assert_eq!(open(dir.path(), options).records, all[6..]);
}

#[test]
fn rotate_before_the_first_sync_names_the_first_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open(dir.path(), FAST).wal;
    wal.rotate(42);
    write_all(&mut wal, &records(1));
    assert_eq!(
        segment_files(dir.path())
            .into_iter()
            .map(|(start, _)| start)
            .collect::<Vec<_>>(),
        [42]
    );
}

#[test]
fn rotate_backwards_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open(dir.path(), FAST).wal;
    wal.rotate(50);
    wal.append(b"a").unwrap();
    wal.rotate(10);
    wal.append(b"b").unwrap();
    wal.sync().unwrap();
    only_segment(dir.path());
    assert_eq!(
        open(dir.path(), FAST).records,
        [b"a".to_vec(), b"b".to_vec()]
    );
}

fn check_torn_tail(cut_at: impl Fn(&[u64]) -> u64) {
    let all = records(4);
    let (dir, path) = log_with(&all);
    let offsets = frame_offsets(&all);
    let cut = cut_at(&offsets);
    let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(cut).unwrap();
    drop(file);

    let opened = open(dir.path(), DURABLE);
    assert_eq!(opened.records, all[..3]);
    assert_eq!(
        opened.discarded_tail,
        Some(DiscardedTail {
            path: path.clone(),
            offset: offsets[3],
            bytes: cut - offsets[3],
        })
    );
    assert_eq!(fs::metadata(&path).unwrap().len(), offsets[3]);
    let mut wal = opened.wal;
    write_all(&mut wal, &[b"after".to_vec()]);
    drop(wal);

    let opened = open(dir.path(), DURABLE);
    let mut wanted = all[..3].to_vec();
    wanted.push(b"after".to_vec());
    assert_eq!(opened.records, wanted);
    assert_eq!(opened.discarded_tail, None);
}

#[test]
fn truncated_last_frame_payload_is_a_torn_tail() {
    check_torn_tail(|offsets| offsets[4] - 3);
}

#[test]
fn truncated_last_frame_header_is_a_torn_tail() {
    check_torn_tail(|offsets| offsets[3] + 5);
}

#[test]
fn bit_flip_in_last_payload_is_a_torn_tail() {
    let all = records(5);
    let (dir, path) = log_with(&all);
    let offsets = frame_offsets(&all);
    flip_bit(&path, offsets[4] + HEADER_LEN as u64 + 2, 0x10);
    let opened = open(dir.path(), FAST);
    assert_eq!(opened.records, all[..4]);
    let tail = opened.discarded_tail.unwrap();
    assert_eq!(
        (tail.offset, tail.bytes),
        (offsets[4], offsets[5] - offsets[4])
    );
    assert_eq!(fs::metadata(&path).unwrap().len(), offsets[4]);
}

#[test]
fn bit_flip_in_middle_payload_is_corruption() {
    let all = records(5);
    let (dir, path) = log_with(&all);
    let offsets = frame_offsets(&all);
    flip_bit(&path, offsets[1] + HEADER_LEN as u64, 0x01);
    let (bad_path, offset) = expect_corrupt(Wal::open(dir.path(), FAST));
    assert_eq!((bad_path, offset), (path.clone(), offsets[1]));
    // The log is left as it was for inspection.
    assert_eq!(fs::metadata(&path).unwrap().len(), offsets[5]);
}

#[test]
fn bit_flip_in_middle_length_is_corruption() {
    // High bit: the length runs past the end; low bit: the checksum no longer matches.
    for mask in [0x01, 0x80] {
        for byte in [4, 7] {
            let all = records(5);
            let (dir, path) = log_with(&all);
            let offsets = frame_offsets(&all);
            flip_bit(&path, offsets[2] + byte, mask);
            let (bad_path, offset) = expect_corrupt(Wal::open(dir.path(), FAST));
            assert_eq!(
                (bad_path, offset),
                (path, offsets[2]),
                "byte {byte} mask {mask}"
            );
        }
    }
}

#[test]
fn bad_magic_in_middle_frame_is_corruption() {
    let all = records(3);
    let (dir, path) = log_with(&all);
    let offsets = frame_offsets(&all);
    flip_bit(&path, offsets[1], 0xFF);
    assert_eq!(expect_corrupt(Wal::open(dir.path(), FAST)).1, offsets[1]);
}

#[test]
fn bad_frame_in_an_older_segment_is_corruption() {
    for truncate in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let all = records(6);
        let mut wal = open(dir.path(), FAST).wal;
        write_all(&mut wal, &all[..3]);
        wal.rotate(10);
        write_all(&mut wal, &all[3..]);
        drop(wal);
        let (_, older) = segment_files(dir.path())[0].clone();
        let offsets = frame_offsets(&all[..3]);
        // What would be a torn tail in the newest segment.
        if truncate {
            let file = fs::OpenOptions::new().write(true).open(&older).unwrap();
            file.set_len(offsets[3] - 1).unwrap();
        } else {
            flip_bit(&older, offsets[2] + HEADER_LEN as u64, 0x04);
        }
        let (bad_path, offset) = expect_corrupt(Wal::open(dir.path(), FAST));
        assert_eq!((bad_path, offset), (older, offsets[2]));
    }
}

#[test]
fn garbage_after_valid_frames_is_a_torn_tail() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for fake_header in [false, true] {
        let all = records(4);
        let (dir, path) = log_with(&all);
        let mut garbage = vec![0u8; 300];
        rng.fill_bytes(&mut garbage);
        if fake_header {
            // A plausible header whose length runs far past the end.
            garbage[..4].copy_from_slice(&FRAME_MAGIC);
            garbage[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        }
        let mut data = fs::read(&path).unwrap();
        let end = data.len() as u64;
        data.extend_from_slice(&garbage);
        fs::write(&path, data).unwrap();

        let opened = open(dir.path(), FAST);
        assert_eq!(opened.records, all);
        let tail = opened.discarded_tail.unwrap();
        assert_eq!((tail.offset, tail.bytes), (end, 300));
        assert_eq!(fs::metadata(&path).unwrap().len(), end);
    }
}

#[test]
fn empty_segment_file_opens_and_takes_appends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("segment-00000000000000000000.wal");
    fs::write(&path, b"").unwrap();
    let opened = open(dir.path(), DURABLE);
    assert!(opened.records.is_empty());
    assert_eq!(opened.discarded_tail, None);
    write_all(&mut { opened.wal }, &records(2));
    assert_eq!(only_segment(dir.path()), path);
    assert_eq!(open(dir.path(), DURABLE).records, records(2));
}

#[test]
fn unrelated_files_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let decoys = [
        "notes.txt",
        "segment-1.wal",
        "segment-00000000000000000000.wal.tmp",
        "segment-0000000000000000000x.wal",
        "segment-99999999999999999999.wal",
    ];
    for name in decoys {
        fs::write(dir.path().join(name), b"not a log").unwrap();
    }
    fs::create_dir(dir.path().join("segment-00000000000000000005.wal")).unwrap();
    let mut wal = open(dir.path(), FAST).wal;
    write_all(&mut wal, &records(3));
    assert!(dir
        .path()
        .join("segment-00000000000000000000.wal")
        .is_file());
    assert_eq!(open(dir.path(), FAST).records, records(3));
    for name in decoys {
        assert_eq!(fs::read(dir.path().join(name)).unwrap(), b"not a log");
    }
}

#[test]
fn injected_write_failure_poisons_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open(dir.path(), DURABLE).wal;
    write_all(&mut wal, &records(2));
    wal.append(b"lost").unwrap();
    wal.fail_next_write();
    assert!(matches!(
        wal.sync(),
        Err(StorageError::Io { op: "write", .. })
    ));
    assert!(wal.is_poisoned());
    assert!(matches!(wal.sync(), Err(StorageError::Poisoned)));
    assert!(matches!(wal.append(b"x"), Err(StorageError::Poisoned)));
    assert!(matches!(wal.release(u64::MAX), Err(StorageError::Poisoned)));
    drop(wal);
    assert_eq!(open(dir.path(), DURABLE).records, records(2));
}

#[test]
fn oversized_record_is_refused() {
    assert_eq!(payload_len(u32::MAX as usize).unwrap(), u32::MAX);
    if let Some(len) = (u32::MAX as usize).checked_add(1) {
        assert!(matches!(
            payload_len(len),
            Err(StorageError::RecordTooLarge { .. })
        ));
    }
}

#[test]
fn truncation_at_every_offset_recovers_a_prefix() {
    let all = records(20);
    let (dir, path) = log_with(&all);
    let full = fs::read(&path).unwrap();
    let offsets = frame_offsets(&all);
    for cut in 0..=full.len() {
        fs::write(&path, &full[..cut]).unwrap();
        let opened = match Wal::open(dir.path(), FAST) {
            Ok(opened) => opened,
            Err(error) => panic!("cut at {cut}: {error}"),
        };
        let kept = offsets.iter().filter(|&&end| end <= cut as u64).count() - 1;
        assert_eq!(opened.records, all[..kept], "cut at {cut}");
        let boundary = offsets[kept];
        assert_eq!(
            opened.discarded_tail.map(|tail| (tail.offset, tail.bytes)),
            (boundary != cut as u64).then_some((boundary, cut as u64 - boundary)),
            "cut at {cut}"
        );
        assert_eq!(fs::metadata(&path).unwrap().len(), boundary, "cut at {cut}");
    }
}

#[test]
fn a_flipped_byte_anywhere_never_panics_or_loses_records_silently() {
    let all = records(8);
    let (dir, path) = log_with(&all);
    let full = fs::read(&path).unwrap();
    let offsets = frame_offsets(&all);
    let last_frame = offsets[all.len() - 1] as usize;
    for at in 0..full.len() {
        let mut data = full.clone();
        data[at] ^= 0x20;
        fs::write(&path, &data).unwrap();
        match Wal::open(dir.path(), FAST) {
            // Only damage to the last frame may be recovered by dropping it.
            Ok(opened) => {
                assert!(at >= last_frame, "flip at {at} was not detected");
                assert_eq!(opened.records, all[..all.len() - 1], "flip at {at}");
            }
            Err(StorageError::Corrupt { offset, .. }) => {
                assert!(at < last_frame, "flip at {at}");
                assert!(offset <= at as u64, "flip at {at} reported at {offset}");
            }
            Err(other) => panic!("flip at {at}: {other}"),
        }
    }
}
