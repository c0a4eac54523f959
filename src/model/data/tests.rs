//! Tests of `model::data`.

use super::*;

fn tiny() -> TrainingData {
    TrainingData {
        item_emb: vec![1.0, 0.0, 0.0, 2.0, 1.0, 1.0],
        item_dim: 2,
        user_emb: None,
        user_dim: 0,
        interactions: vec![
            Interaction {
                user: 0,
                item: 0,
                weight: 1.0,
                ts_ms: 0,
            },
            Interaction {
                user: 0,
                item: 1,
                weight: 1.0,
                ts_ms: 1_000,
            },
            Interaction {
                user: 1,
                item: 2,
                weight: 0.0,
                ts_ms: 5,
            },
        ],
        n_users: 2,
    }
}

#[test]
fn prepared_normalises_and_builds_profiles() {
    let p = Prepared::new(&tiny(), Recency::by_age(180.0)).expect("valid data");
    assert!((p.x_item[2] - 0.0).abs() < 1e-6 && (p.x_item[3] - 1.0).abs() < 1e-6);
    let norm = (p.x_user[0].powi(2) + p.x_user[1].powi(2)).sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "user profile is normalised");
    assert_eq!(p.negatives, vec![(1, 2)]);
    assert_eq!(p.user_items[0], vec![0, 1]);
    assert_eq!(
        &p.x_user[2..4],
        &[0.0, 0.0],
        "a user without positives has a zero profile"
    );
}

#[test]
fn timestamps_at_the_ends_of_i64_do_not_overflow() {
    // Regression (found by the gRPC fuzz test): `last - ts` and `t_max - t_min` overflowed
    // for a user with events at i64::MIN and i64::MAX ("attempt to subtract with overflow").
    let mut data = tiny();
    data.interactions[0].ts_ms = i64::MIN;
    data.interactions[1].ts_ms = i64::MAX;
    let p = Prepared::new(&data, Recency::by_age(180.0)).expect("valid data");
    assert!(p.x_user.iter().all(|x| x.is_finite()), "{:?}", p.x_user);
    let events: Vec<(&[f32], f32, i64)> = vec![
        (&data.item_emb[0..2], 1.0, i64::MIN),
        (&data.item_emb[2..4], 1.0, i64::MAX),
    ];
    let u = profile_input(&events, 2, Recency::by_age(180.0)).expect("a profile");
    // the old event weighs nothing next to one 2^64 ms later: the profile is the newer item
    assert!(
        (u[0] - 0.0).abs() < 1e-6 && (u[1] - 1.0).abs() < 1e-6,
        "{u:?}"
    );
}

#[test]
fn profile_input_is_the_training_user_input() {
    let s = crate::model::synth::generate(&crate::model::synth::SynthSpec {
        n_items: 64,
        n_users: 16,
        ..Default::default()
    });
    let mut data = s.data.clone();
    // spread the events over days (recency weights differ) and add negatives, which must not count
    for (k, x) in data.interactions.iter_mut().enumerate() {
        x.ts_ms = (k as i64 % 7) * 86_400_000 * 30;
        if k % 5 == 0 {
            x.weight = 0.0;
        }
    }
    let recency = Recency {
        half_life_days: 45.0,
        half_life_events: 1.5,
    };
    let p = Prepared::new(&data, recency).expect("prep");
    let d = data.item_dim;
    for u in [0u32, 5, 11] {
        let mut mine: Vec<Interaction> = data
            .interactions
            .iter()
            .filter(|x| x.user == u)
            .copied()
            .collect();
        mine.sort_by_key(|x| (x.ts_ms, x.item));
        let events: Vec<(&[f32], f32, i64)> = mine
            .iter()
            .map(|x| {
                let i = x.item as usize;
                (&data.item_emb[i * d..(i + 1) * d], x.weight, x.ts_ms)
            })
            .collect();
        let got = profile_input(&events, d, recency).expect("has positives");
        let u = u as usize;
        assert_eq!(&got[..], &p.x_user[u * d..(u + 1) * d], "user {u}");
    }
    let t = tiny();
    let only_negative = [(&t.item_emb[4..6], 0.0f32, 5i64)];
    assert_eq!(
        profile_input(&only_negative, 2, Recency::by_age(180.0)),
        None
    );
    assert_eq!(profile_input(&[], 2, Recency::by_age(180.0)), None);
}

#[test]
fn a_causal_input_is_the_profile_of_what_came_before() {
    let s = crate::model::synth::generate(&crate::model::synth::SynthSpec {
        n_items: 64,
        n_users: 8,
        per_user: 40,
        ..Default::default()
    });
    let mut data = s.data.clone();
    for (k, x) in data.interactions.iter_mut().enumerate() {
        x.ts_ms = k as i64 * 60_000;
    }
    // user 7 keeps one positive
    data.interactions
        .retain(|x| x.user != 7 || x.ts_ms == 40 * 7 * 60_000);
    let recency = Recency {
        half_life_days: 0.01,
        half_life_events: 0.5,
    };
    let p = Prepared::new(&data, recency).expect("prep");
    assert_eq!(recency.window(), 13);
    let d = p.item_dim;
    let events = |range: std::ops::Range<usize>| -> Vec<(&[f32], f32, i64)> {
        range
            .map(|j| {
                let i = p.positives[j].1 as usize;
                (
                    &p.x_item[i * d..(i + 1) * d],
                    p.positive_meta[j].0,
                    p.positive_meta[j].1,
                )
            })
            .collect()
    };
    let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
    let u = 3usize;
    let (first, end) = (p.user_offsets[u], p.user_offsets[u + 1]);
    assert_eq!(end - first, 40);
    assert!(p.positives[first..end]
        .iter()
        .all(|&(v, _)| v as usize == u));
    // of the 39 events before the last, the window keeps 13: the others weigh nothing
    for at in [first + 1, first + 5, end - 1] {
        let want = profile_input(&events(first..at), d, recency).expect("history");
        let got = p.causal_input(at).expect("causal input");
        assert!(close(&got, &want), "positive {at}");
        // the item to predict is not in its own input, unlike in the full profile
        let full = &p.x_user[u * d..(u + 1) * d];
        assert!(!close(&got, full), "positive {at} sees its own item");
    }
    // the last positive's input is the full profile without it
    let last = p.causal_input(end - 1).expect("input");
    let without = profile_input(&events(first..end - 1), d, recency).expect("x");
    assert!(close(&last, &without));
    // a first positive has no past: the profile of the later ones
    let want = profile_input(&events(first + 1..end), d, recency).expect("later");
    assert!(close(&p.causal_input(first).expect("input"), &want));
    // one positive: no input without it; an index out of range: none either
    let only = p.user_offsets[7];
    assert_eq!(p.user_offsets[8] - only, 1);
    assert_eq!(p.causal_input(only), None);
    assert_eq!(p.causal_input(p.positives.len()), None);
    // users with own embeddings are described by them, not by profiles
    let mut own = data.clone();
    own.user_emb = Some(vec![0.5; own.n_users * 4]);
    own.user_dim = 4;
    let q = Prepared::new(&own, recency).expect("prep");
    assert_eq!(q.causal_input(first + 1), None);
}

#[test]
fn timeless_data_have_defined_causal_inputs() {
    // every timestamp 0: no positive is before another, so each pair's input is the plain
    // mean of the user's other positives, not the recency-weighted few that happen to sort
    // first (the position half-life would otherwise weigh an arbitrary order)
    let s = crate::model::synth::generate(&crate::model::synth::SynthSpec {
        n_items: 64,
        n_users: 4,
        per_user: 12,
        ..Default::default()
    });
    let mut data = s.data.clone();
    data.interactions.iter_mut().for_each(|x| x.ts_ms = 0);
    let recency = Recency {
        half_life_days: 180.0,
        half_life_events: 1.0,
    };
    let p = Prepared::new(&data, recency).expect("prep");
    let d = p.item_dim;
    let mean_of = |js: &[usize]| {
        let mut m = vec![0.0f32; d];
        for &j in js {
            let i = p.positives[j].1 as usize;
            let w = p.positive_meta[j].0;
            m.iter_mut()
                .zip(&p.x_item[i * d..(i + 1) * d])
                .for_each(|(a, b)| *a += w * b);
        }
        l2_normalise_rows(&mut m, d);
        m
    };
    let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
    for u in 0..p.n_users {
        let (first, end) = (p.user_offsets[u], p.user_offsets[u + 1]);
        assert!(end - first >= 3);
        for at in first..end {
            let others: Vec<usize> = (first..end).filter(|&j| j != at).collect();
            let got = p.causal_input(at).expect("input");
            assert!(close(&got, &mean_of(&others)), "user {u} positive {at}");
        }
        // and the user's own input weighs all its positives alike
        let all: Vec<usize> = (first..end).collect();
        assert!(
            close(&p.x_user[u * d..(u + 1) * d], &mean_of(&all)),
            "user {u}"
        );
    }
}

#[test]
fn pair_sampler_mixes_log_and_item_first_draws() {
    use rand::SeedableRng;
    let s = crate::model::synth::generate(&crate::model::synth::SynthSpec {
        n_items: 40,
        n_users: 30,
        ..Default::default()
    });
    let p = Prepared::new(&s.data, Recency::by_age(180.0)).expect("prep");
    // share 0 is plain log sampling, draw for draw
    let plain = PairSampler::new(&p, 0.0);
    let (mut r1, mut r2) = (
        rand_chacha::ChaCha8Rng::seed_from_u64(3),
        rand_chacha::ChaCha8Rng::seed_from_u64(3),
    );
    for _ in 0..100 {
        let want = p.positives[rand::Rng::random_range(&mut r2, 0..p.positives.len())];
        assert_eq!(plain.sample(&p, &mut r1), want);
    }
    // share 0.6: item and user frequencies follow the mix of the two ways of drawing
    let m = 0.6;
    let mixed = PairSampler::new(&p, m);
    let k = p.item_count.iter().filter(|&&c| c > 0.0).count() as f64;
    let n_pos = p.positives.len() as f64;
    let q_item: Vec<f64> = (p.item_count.iter())
        .map(|&c| match c > 0.0 {
            true => (1.0 - m) * c as f64 / n_pos + m / k,
            false => 0.0,
        })
        .collect();
    let q_user: Vec<f64> = (p.user_items.iter())
        .map(|items| {
            let tail: f64 = items
                .iter()
                .map(|&i| 1.0 / p.item_count[i as usize] as f64)
                .sum();
            (1.0 - m) * items.len() as f64 / n_pos + m * tail / k
        })
        .collect();
    let n = 200_000;
    let (mut ci, mut cu) = (vec![0usize; p.n_items], vec![0usize; p.n_users]);
    for _ in 0..n {
        let (u, i) = mixed.sample(&p, &mut r1);
        assert!(p.item_users[i as usize].contains(&u), "a real positive");
        ci[i as usize] += 1;
        cu[u as usize] += 1;
    }
    for (counts, q) in [(&ci, &q_item), (&cu, &q_user)] {
        assert!((q.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        for (e, (&c, &q)) in counts.iter().zip(q.iter()).enumerate() {
            let want = q * n as f64;
            assert!(
                (c as f64 - want).abs() < 5.0 * want.sqrt().max(1.0),
                "entity {e}: drawn {c}, expected {want:.0}"
            );
        }
    }
}

#[test]
fn bad_inputs_give_typed_errors() {
    let mut d = tiny();
    d.item_emb[1] = f32::NAN;
    assert!(matches!(d.validate(), Err(ModelError::InvalidData(_))));
    let mut d = tiny();
    d.item_emb.pop();
    assert!(matches!(d.validate(), Err(ModelError::InvalidData(_))));
    let mut d = tiny();
    d.interactions[0].item = 9;
    assert!(matches!(d.validate(), Err(ModelError::InvalidData(_))));
    assert!(matches!(
        TrainingData::default().validate(),
        Err(ModelError::InvalidData(_))
    ));
    let mut d = tiny();
    d.user_emb = Some(vec![1.0; 3]);
    d.user_dim = 2;
    assert!(matches!(d.validate(), Err(ModelError::InvalidData(_))));
}

#[test]
fn loader_reads_layout_and_rejects_bad_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    std::fs::write(
        p.join("items.tsv"),
        "title\titem_idx\titem_key\nA\t0\ta\nB\t1\tb\n",
    )
    .expect("write");
    std::fs::write(
        p.join("interactions.tsv"),
        "user_idx\titem_idx\trating\ttimestamp\n0\t1\t5\t10\n",
    )
    .expect("write");
    std::fs::write(p.join("item_emb.json"), r#"{"dim": 2}"#).expect("write");
    let emb: Vec<u8> = [1.0f32, 0.0, 0.0, 1.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    std::fs::write(p.join("item_emb.f32"), &emb).expect("write");
    let ds = load_dataset(p).expect("loads");
    assert_eq!(ds.item_keys, vec!["a", "b"]);
    assert_eq!(
        ds.ratings[0],
        Rating {
            user: 0,
            item: 1,
            rating: 5.0,
            ts_ms: 10_000
        }
    );
    std::fs::write(p.join("item_emb.f32"), &emb[..8]).expect("write");
    assert!(matches!(load_dataset(p), Err(ModelError::Format { .. })));
    assert!(matches!(
        load_dataset(&p.join("nope")),
        Err(ModelError::Io { .. })
    ));
}
