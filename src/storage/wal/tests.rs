//! Tests of `storage::wal`.

use super::*;

fn opts() -> WalOptions {
    WalOptions {
        flush_interval: Duration::from_millis(20),
        segment_bytes: 200,
        max_pending_bytes: 1 << 20,
    }
}

fn read_all(dir: &Path) -> Vec<Vec<u8>> {
    let segs = list_segments(dir).unwrap();
    let mut out = Vec::new();
    for (i, (_, p)) in segs.iter().enumerate() {
        replay_segment(p, i + 1 == segs.len(), |b| {
            out.push(b.to_vec());
            Ok(())
        })
        .unwrap();
    }
    out
}

#[test]
fn appends_survive_close_and_rotate() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::start(dir.path(), 1, opts()).unwrap();
    let mut lsn = 0;
    for i in 0..50u32 {
        lsn = wal.append(&i.to_le_bytes().repeat(3), i % 2 == 0).unwrap();
    }
    wal.wait_durable_blocking(lsn).unwrap();
    assert!(
        !wal.closed_segments().is_empty(),
        "200-byte segments must rotate"
    );
    let files = wal.close().unwrap();
    assert_eq!(files.len(), list_segments(dir.path()).unwrap().len());
    let got = read_all(dir.path());
    assert_eq!(got.len(), 50);
    for (i, b) in got.iter().enumerate() {
        assert_eq!(b, &(i as u32).to_le_bytes().repeat(3));
    }
    assert!(matches!(wal.append(b"x", true), Err(Error::Unavailable(_))));
}

#[test]
fn buffered_appends_reach_disk_within_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::start(dir.path(), 1, opts()).unwrap();
    let lsn = wal.append(b"buffered", false).unwrap();
    wal.wait_durable_blocking(lsn).unwrap();
    assert_eq!(read_all(dir.path()), vec![b"buffered".to_vec()]);
}

#[test]
fn torn_tail_ends_the_last_segment_but_not_a_closed_one() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::start(
        dir.path(),
        7,
        WalOptions {
            segment_bytes: 1 << 20,
            ..opts()
        },
    )
    .unwrap();
    for i in 0..3u8 {
        let l = wal.append(&[i; 10], true).unwrap();
        wal.wait_durable_blocking(l).unwrap();
    }
    let files = wal.close().unwrap();
    let path = &files[0];
    let len = fs::metadata(path).unwrap().len();
    // Cut the last frame in half: the tail is ignored, earlier frames replay.
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let mut n = 0;
    let torn = replay_segment(path, true, |_| {
        n += 1;
        Ok(())
    })
    .unwrap();
    // One batch per durable append: 16 bytes of batch header, 8 of frame header, 10 of
    // payload; 5 of the last were cut.
    assert_eq!((n, torn), (2, 29));
    // The same damage in a closed segment is corruption.
    let err = replay_segment(path, false, |_| Ok(())).unwrap_err();
    assert!(matches!(err, Error::DataLoss(_)), "{err:?}");
}

/// Three durable appends, one batch each; returns the closed segment.
fn three_batches(dir: &Path) -> PathBuf {
    let wal = Wal::start(
        dir,
        1,
        WalOptions {
            segment_bytes: 1 << 20,
            ..opts()
        },
    )
    .unwrap();
    for i in 0..3u8 {
        let l = wal.append(&[i; 10], true).unwrap();
        wal.wait_durable_blocking(l).unwrap();
    }
    wal.close().unwrap().remove(0)
}

fn count(path: &Path) -> Result<(usize, u64)> {
    let mut n = 0;
    let torn = replay_segment(path, true, |_| {
        n += 1;
        Ok(())
    })?;
    Ok((n, torn))
}

#[test]
fn damage_followed_by_an_intact_batch_is_corruption_even_in_the_last_segment() {
    // Regression: a damaged frame in the middle of the newest segment was taken for a torn
    // tail; replay stopped there, and the acknowledged writes after it were dropped.
    let dir = tempfile::tempdir().unwrap();
    let path = three_batches(dir.path());
    let good = fs::read(&path).unwrap();
    let batch = BATCH_HEADER + FRAME_HEADER + 10;
    for (what, at) in [
        ("payload", MAGIC.len() + BATCH_HEADER + FRAME_HEADER + 3),
        ("frame length", MAGIC.len() + BATCH_HEADER),
        ("batch length", MAGIC.len() + 4),
        ("second batch", MAGIC.len() + batch + BATCH_HEADER + 1),
    ] {
        let mut data = good.clone();
        data[at] ^= 0x40;
        fs::write(&path, &data).unwrap();
        let err = count(&path).unwrap_err();
        assert!(
            matches!(&err, Error::DataLoss(m) if m.contains("followed by an intact one")),
            "{what}: {err:?}"
        );
    }
    // Damage in the last batch cannot be told from a torn write: the two before replay.
    let mut data = good.clone();
    data[MAGIC.len() + 2 * batch + BATCH_HEADER + FRAME_HEADER] ^= 0x40;
    fs::write(&path, &data).unwrap();
    assert_eq!(count(&path).unwrap(), (2, batch as u64));
    // A tail of zeros (blocks allocated, never written) is a torn tail too.
    let mut data = good.clone();
    data.extend_from_slice(&[0; 100]);
    fs::write(&path, &data).unwrap();
    assert_eq!(count(&path).unwrap(), (3, 100));
}

#[test]
fn segments_of_the_first_format_still_replay() {
    let dir = tempfile::tempdir().unwrap();
    let path = segment_path(dir.path(), 1);
    let mut data = MAGIC_V1.to_vec();
    for payload in [&b"one"[..], b"two"] {
        data.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        data.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        data.extend_from_slice(payload);
    }
    data.extend_from_slice(&[7, 0, 0]);
    fs::write(&path, &data).unwrap();
    let mut got = Vec::new();
    let torn = replay_segment(&path, true, |p| {
        got.push(p.to_vec());
        Ok(())
    })
    .unwrap();
    assert_eq!((got, torn), (vec![b"one".to_vec(), b"two".to_vec()], 3));
}

#[test]
fn a_large_sync_is_cut_into_batches_at_frame_boundaries() {
    let mut data = Vec::new();
    for len in [5usize, 7, 3] {
        data.extend_from_slice(&(len as u32).to_le_bytes());
        data.extend_from_slice(&[0; 4]);
        data.extend(std::iter::repeat_n(1u8, len));
    }
    let bodies = |max| batches(&data, max).map(|b| b.len()).collect::<Vec<_>>();
    assert_eq!(bodies(MAX_BATCH), vec![39]);
    assert_eq!(bodies(30), vec![28, 11]);
    assert_eq!(bodies(20), vec![13, 15, 11]);
    assert_eq!(bodies(5), vec![13, 15, 11]);
}

#[test]
fn buffered_write_after_an_idle_period_is_synced() {
    // Regression: the sync thread slept without a deadline when idle, and a BUFFERED append
    // did not wake it, so the write stayed in memory until the next DURABLE one.
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::start(dir.path(), 1, opts()).unwrap();
    let first = wal.append(b"one", true).unwrap();
    wal.wait_durable_blocking(first).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let second = wal.append(b"two", false).unwrap();
    wal.wait_durable_blocking(second).unwrap();
}

#[test]
fn a_full_queue_is_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    // Buffered writes wait 10 s for their sync, so the first one is still pending.
    let o = WalOptions {
        flush_interval: Duration::from_secs(10),
        max_pending_bytes: 16,
        ..opts()
    };
    let wal = Wal::start(dir.path(), 1, o).unwrap();
    wal.append(&[0; 32], false).unwrap();
    let err = wal.append(&[0; 8], false).unwrap_err();
    assert!(
        matches!(&err, Error::ResourceExhausted(m) if m.contains("write queue full")),
        "{err:?}"
    );
    // A durable write drains the queue, after which writes are accepted again.
    let lsn = wal.append(&[], true);
    assert!(lsn.is_err(), "still full until the sync thread runs");
    drop(wal);
}

#[test]
fn foreign_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(segment_path(dir.path(), 1), b"NOTAWAL!garbage").unwrap();
    let err = replay_segment(&segment_path(dir.path(), 1), true, |_| Ok(())).unwrap_err();
    assert!(err.to_string().contains("bad magic"), "{err}");
    fs::write(dir.path().join("junk.wal"), b"").unwrap();
    assert!(list_segments(dir.path()).is_err());
}
