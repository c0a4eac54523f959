//! Recency weighting of a user's interactions: one formula for the trainer's user inputs and the
//! query-time profile vector of `Search` / `Recommend`, so both describe a user the same way.

/// The weight of an interaction `age_ms` older than the user's latest one: it halves every
/// `half_life_ms` (which is clamped to at least 1 ms).
pub fn recency_weight(age_ms: f64, half_life_ms: f64) -> f32 {
    0.5f64.powf(age_ms.max(0.0) / half_life_ms.max(1.0)) as f32
}

#[cfg(test)]
mod tests {
    use super::recency_weight;

    #[test]
    fn halves_every_half_life() {
        assert_eq!(recency_weight(0.0, 1000.0), 1.0);
        assert!((recency_weight(1000.0, 1000.0) - 0.5).abs() < 1e-6);
        assert!((recency_weight(3000.0, 1000.0) - 0.125).abs() < 1e-6);
        // Clock skew (an event newer than the latest) never weighs more than 1.
        assert_eq!(recency_weight(-5.0, 1000.0), 1.0);
    }
}
