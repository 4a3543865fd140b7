//! The random walk behind the demo figures (metrics, trade prices).
//!
//! Uniform noise per step would make charts jitter; a plain random walk
//! drifts off to a wall and sticks there. A mean-reverting walk (a discrete
//! Ornstein-Uhlenbeck process) moves smoothly, wanders, and keeps coming
//! back, which is how a CPU gauge or a price looks on a dashboard. Clamping
//! keeps it within its bounds whatever the noise does.

use fastrand::Rng;

#[derive(Debug, Clone)]
pub struct Walk {
    value: f64,
    mean: f64,
    /// Share of the distance to the mean recovered per step, 0..1.
    reversion: f64,
    /// Typical size of one step's noise.
    volatility: f64,
    min: f64,
    max: f64,
}

impl Walk {
    /// A walk starting at `mean`.
    pub fn new(mean: f64, reversion: f64, volatility: f64, min: f64, max: f64) -> Walk {
        debug_assert!(min <= mean && mean <= max);
        Walk {
            value: mean,
            mean,
            reversion,
            volatility,
            min,
            max,
        }
    }

    /// Takes one step and returns the new value, always within the bounds.
    pub fn step(&mut self, rng: &mut Rng) -> f64 {
        let pull = self.reversion * (self.mean - self.value);
        self.value = (self.value + pull + self.volatility * noise(rng)).clamp(self.min, self.max);
        self.value
    }
}

/// Roughly normal noise with mean 0 and standard deviation 1: the sum of
/// four uniforms (Irwin-Hall), which is smooth enough for a chart and never
/// produces the rare huge outlier of a true normal.
pub fn noise(rng: &mut Rng) -> f64 {
    let sum: f64 = (0..4).map(|_| rng.f64()).sum();
    // Four uniforms have mean 2 and variance 4/12.
    (sum - 2.0) / (4.0f64 / 12.0).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_bounds_and_moves() {
        let mut rng = Rng::with_seed(1);
        // Violent noise relative to the range: clamping must hold.
        let mut walk = Walk::new(50.0, 0.05, 30.0, 0.0, 100.0);
        let mut seen_low = false;
        let mut seen_high = false;
        for _ in 0..100_000 {
            let v = walk.step(&mut rng);
            assert!((0.0..=100.0).contains(&v), "{v}");
            seen_low |= v < 40.0;
            seen_high |= v > 60.0;
        }
        assert!(seen_low && seen_high, "the walk wanders");
    }

    #[test]
    fn reverts_to_its_mean() {
        let mut rng = Rng::with_seed(2);
        let mut walk = Walk::new(20.0, 0.1, 1.0, 0.0, 1000.0);
        let steps = 50_000;
        let total: f64 = (0..steps).map(|_| walk.step(&mut rng)).sum();
        let average = total / steps as f64;
        assert!((average - 20.0).abs() < 1.0, "average {average}");
    }

    #[test]
    fn noise_is_centred_and_bounded() {
        let mut rng = Rng::with_seed(3);
        let samples: Vec<f64> = (0..100_000).map(|_| noise(&mut rng)).collect();
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!(samples.iter().all(|n| n.abs() <= 3.5));
    }
}
