//! Tests of `engine::training`.

use super::*;

/// Runs "a step" of `work`, with `requests` arriving during it, then paces; returns the pause.
fn step(p: &Pacer, a: &Activity, work: Duration, requests: usize) -> Duration {
    std::thread::sleep(work);
    for _ in 0..requests {
        a.note();
    }
    let before = p.slept();
    p.pace();
    p.slept() - before
}

#[test]
fn pauses_only_while_requests_arrive_and_in_proportion_to_the_step() {
    let a = Activity::default();
    let p = Pacer::new(&a, 0.25);
    let work = Duration::from_millis(20);
    assert_eq!(
        step(&p, &a, work, 0),
        Duration::ZERO,
        "idle server: no pause"
    );
    let paused = step(&p, &a, work, 3);
    // (1 - 0.25) / 0.25 = 3 step times (the step took at least `work`)
    assert!(paused >= work * 3, "{paused:?}");
    assert!(paused <= Duration::from_secs(1), "capped: {paused:?}");
    assert_eq!(step(&p, &a, work, 0), Duration::ZERO, "requests stopped");
    // a long step pauses at most 1 s
    let long = step(&p, &a, Duration::from_millis(400), 1);
    assert_eq!(long, Duration::from_secs(1));
    // duty 1 never pauses
    let off = Pacer::new(&a, 1.0);
    assert_eq!(step(&off, &a, work, 5), Duration::ZERO);
}
