//! Tests of `engine::retrieval`.

use super::*;

#[test]
fn profiles_of_underflowed_weights_are_rescaled_and_empty_ones_refused() {
    // Regression: events far older than the user's newest weigh ~1e-30 each, and the
    // profile's squared length underflowed: Search by user_id answered "vector has zero
    // norm" (INVALID_ARGUMENT, no field named).
    let tiny = usable_profile(vec![3e-30, 4e-30]).expect("a direction");
    assert!((tiny[0] - 0.6).abs() < 1e-6 && (tiny[1] - 0.8).abs() < 1e-6);
    assert!(distance::normalize(&mut tiny.clone()));
    assert!(!distance::normalize(&mut [3e-30, 4e-30]));
    assert_eq!(usable_profile(vec![0.5, 2.0]), Some(vec![0.5, 2.0]));
    assert_eq!(usable_profile(vec![0.0, 0.0]), None);
    assert_eq!(usable_profile(vec![f64::INFINITY, 1.0]), None);
    let huge = usable_profile(vec![3e30, 4e30]).expect("a direction");
    assert!((huge[1] - 0.8).abs() < 1e-6);
}

#[test]
fn profiles_beyond_f32_keep_their_direction() {
    // Regression: two events of weight 3e38 summed to an infinite f32 profile, and Search by
    // user_id failed. Summed in f64 the profile is finite and comes back at unit length.
    let p = usable_profile(vec![2.0 * 3e38 * 0.6, 2.0 * 3e38 * 0.8]).expect("a direction");
    assert!(
        (p[0] - 0.6).abs() < 1e-6 && (p[1] - 0.8).abs() < 1e-6,
        "{p:?}"
    );
    assert!(distance::normalize(&mut p.clone()));
    // components that fit f32 but whose squared length does not
    let p = usable_profile(vec![2e19, 2e19, 2e19]).expect("a direction");
    assert!(distance::normalize(&mut p.clone()), "{p:?}");
    let far = usable_profile(vec![1e300, -1e300]).expect("a direction");
    assert!((far[0] - 0.5f32.sqrt()).abs() < 1e-6);
    assert_eq!(usable_profile(vec![f64::NAN, 1.0]), None);
}
