//! Percentiles of latency samples and small helpers shared by the scenarios.

use serde::Serialize;

/// Percentiles of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// Nearest-rank percentiles of `ms` (empty input gives zeros with `samples: 0`).
    pub fn of(mut ms: Vec<f64>) -> Latency {
        if ms.is_empty() {
            return Latency::default();
        }
        ms.sort_by(f64::total_cmp);
        Latency {
            samples: ms.len(),
            p50_ms: rank(&ms, 0.50),
            p99_ms: rank(&ms, 0.99),
            max_ms: ms[ms.len() - 1],
        }
    }
}

fn rank(sorted: &[f64], q: f64) -> f64 {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "sample counts are far below 2^52"
    )]
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[i - 1]
}

/// The median of `xs` (0 for none).
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `count` per second over `micros` microseconds.
pub fn per_second(count: u64, micros: i64) -> f64 {
    #[expect(clippy::cast_precision_loss, reason = "rates, not exact counts")]
    let rate = count as f64 * 1e6 / micros.max(1) as f64;
    rate
}

/// Microseconds as milliseconds.
pub fn us_to_ms(us: i64) -> f64 {
    #[expect(
        clippy::cast_precision_loss,
        reason = "latencies are far below 2^52 µs"
    )]
    let ms = us as f64 / 1000.0;
    ms
}

/// Rounds for display and JSON: 3 significant decimals for small values, whole numbers above.
pub fn round(v: f64) -> f64 {
    if v.abs() >= 100.0 {
        v.round()
    } else {
        (v * 1000.0).round() / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let l = Latency::of((1..=100).map(f64::from).collect());
        assert_eq!(
            (l.p50_ms, l.p99_ms, l.max_ms, l.samples),
            (50.0, 99.0, 100.0, 100)
        );
        assert_eq!(Latency::of(vec![]).samples, 0);
        assert_eq!(Latency::of(vec![3.0]).p99_ms, 3.0);
    }
}
