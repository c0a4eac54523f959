//! Tests of the collection index.

use super::persist::*;
use super::*;

fn sample() -> PointsFile {
    let cal = Calibration {
        ef: 256,
        recall: 0.965,
        queries: 100,
        target: 0.95,
        on_queries: true,
    };
    PointsFile {
        generation: 42,
        next_point: 3,
        items: vec![("a".into(), 0), ("b".into(), 2)],
        users: vec![("u".into(), 1)],
        pending: HashMap::from([(SpaceId::Item(0), HashSet::from([2]))]),
        calibrations: HashMap::from([(SpaceId::Item(0), (1_000_000, cal))]),
    }
}

fn write(dir: &Path, bytes: &[u8]) {
    fs::write(dir.join(POINTS_FILE), bytes).unwrap();
}

/// The body with its CRC recomputed.
fn sealed(mut body: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&body);
    body.extend_from_slice(&crc.to_le_bytes());
    body
}

#[test]
fn the_points_file_round_trips_with_its_calibrations() {
    let dir = tempfile::tempdir().unwrap();
    let p = sample();
    write(dir.path(), &p.encode());
    let back = PointsFile::read(dir.path()).unwrap();
    assert_eq!((back.generation, back.next_point), (42, 3));
    assert_eq!((back.items, back.users), (p.items, p.users));
    assert_eq!(back.pending, p.pending);
    assert_eq!(back.calibrations, p.calibrations);
}

#[test]
fn points_are_found_in_scan_order_and_out_of_it() {
    let p = PointsFile {
        items: (0..100).map(|i| (format!("i{i:03}"), 1000 + i)).collect(),
        ..PointsFile::default()
    };
    let mut next = 0;
    for i in 0..100 {
        assert_eq!(
            p.point(EntityKind::Items, &format!("i{i:03}"), &mut next),
            Some(1000 + i)
        );
    }
    // skipping, going back, unknown ids and the other kind
    let mut next = 0;
    assert_eq!(p.point(EntityKind::Items, "i050", &mut next), Some(1050));
    assert_eq!(next, 51);
    assert_eq!(p.point(EntityKind::Items, "i051", &mut next), Some(1051));
    assert_eq!(p.point(EntityKind::Items, "i007", &mut next), Some(1007));
    assert_eq!(p.point(EntityKind::Items, "i0075", &mut next), None);
    assert_eq!(p.point(EntityKind::Items, "zzz", &mut next), None);
    assert_eq!(p.point(EntityKind::Users, "i001", &mut 0), None);
}

#[test]
fn points_out_of_order_are_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = PointsFile {
        items: vec![("b".into(), 0), ("a".into(), 2)],
        ..sample()
    };
    write(dir.path(), &p.encode());
    let err = PointsFile::read(dir.path()).unwrap_err().to_string();
    assert!(err.contains("out of order"), "{err}");
}

#[test]
fn a_points_file_without_calibrations_still_reads() {
    // the layout before calibrations were kept: the same bytes up to the pending sets
    let dir = tempfile::tempdir().unwrap();
    let p = PointsFile {
        calibrations: HashMap::new(),
        ..sample()
    };
    let bytes = p.encode();
    let old = bytes[..bytes.len() - 4 - 4].to_vec(); // CRC, then the u32 count 0
    write(dir.path(), &sealed(old));
    let back = PointsFile::read(dir.path()).unwrap();
    assert_eq!(back.pending, p.pending);
    assert!(back.calibrations.is_empty());
}

#[test]
fn a_damaged_calibration_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = sample().encode();
    // the recall (before the queries, the target, the source byte and the CRC) set to NaN
    let body = bytes.len() - 4;
    let mut bad = bytes[..body].to_vec();
    let at = body - 1 - 8 - 8 - 8;
    bad[at..at + 8].copy_from_slice(&f64::NAN.to_bits().to_le_bytes());
    write(dir.path(), &sealed(bad));
    let err = PointsFile::read(dir.path()).unwrap_err().to_string();
    assert!(err.contains("impossible calibration"), "{err}");
    // a truncated section (checksum fine) is an error too, not a panic
    write(dir.path(), &sealed(bytes[..body - 3].to_vec()));
    assert!(PointsFile::read(dir.path()).is_err());
    // and a flipped byte fails the checksum
    let mut flipped = bytes.clone();
    flipped[body - 20] ^= 1;
    write(dir.path(), &flipped);
    let err = PointsFile::read(dir.path()).unwrap_err().to_string();
    assert!(err.contains("checksum"), "{err}");
}

#[test]
fn neighbours_bind_to_points_and_a_deleted_item_leaves_both_ends() {
    use crate::model::neighbours::ItemNeighbours;
    let mut items = Entities::default();
    // "a" -> 10, "b" -> 11, "c" -> 12; "gone" was trained on but is not in the index
    for (id, p) in [("a", 10), ("b", 11), ("c", 12)] {
        items.bind(id, p);
    }
    let n = VersionNeighbours {
        items: ["a", "gone", "b", "c"].map(Arc::from).to_vec(),
        lists: Arc::new(ItemNeighbours::from_lists(vec![
            vec![(2, 0.5), (1, 0.4), (3, 0.25)],
            vec![(0, 0.9)],
            vec![(0, 0.5)],
            vec![(0, 0.25), (2, 0.125)],
        ])),
    };
    let mut b = BoundNeighbours::bind(&n, &items);
    let of = |b: &BoundNeighbours, p: PointId| {
        let mut v = Vec::new();
        let (rows, sims) = b.lists_of(p);
        for (&row, &s) in rows.iter().zip(sims) {
            v.extend(b.point(row).map(|t| (t, s)));
        }
        v
    };
    assert_eq!(b.slots(), 4);
    assert_eq!((b.point(0), b.point(1), b.point(4)), (Some(10), None, None));
    // the unbound "gone" is neither a source nor a target
    assert_eq!(of(&b, 10), vec![(11, 0.5), (12, 0.25)]);
    assert_eq!(of(&b, 12), vec![(10, 0.25), (11, 0.125)]);
    assert!(of(&b, 99).is_empty());
    // deleting "b" removes its list and its place in the others'
    b.remove(11);
    assert!(of(&b, 11).is_empty());
    assert_eq!(of(&b, 10), vec![(12, 0.25)]);
    assert_eq!(of(&b, 12), vec![(10, 0.25)]);
}
