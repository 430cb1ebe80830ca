//! Helpers shared by the integration tests: tolerant comparison that collects every mismatch.

#![allow(dead_code)]

/// Statistics agree with the fixtures to this relative tolerance.
pub const STAT_TOL: f64 = 1e-9;
/// p-values agree to this relative tolerance.
pub const PVALUE_TOL: f64 = 1e-6;

/// Collects mismatches so that one run reports all of them.
#[derive(Default)]
pub struct Check {
    pub failures: Vec<String>,
    pub compared: usize,
}

impl Check {
    /// `|a − b| <= tol · max(|b|, 1e-300)`; equal values (both zero, same infinity) always pass.
    pub fn close(&mut self, what: impl std::fmt::Display, actual: f64, expected: f64, tol: f64) {
        self.compared += 1;
        let ok = actual == expected
            || (actual - expected).abs() <= tol * expected.abs().max(1e-300)
            || (actual.is_nan() && expected.is_nan());
        if !ok {
            self.failures.push(format!(
                "{what}: got {actual:e}, expected {expected:e} (rel {:e})",
                ((actual - expected) / expected).abs()
            ));
        }
    }

    pub fn stat(&mut self, what: impl std::fmt::Display, actual: f64, expected: f64) {
        self.close(what, actual, expected, STAT_TOL);
    }

    /// p-values: relative, except that values below 1e-200 only need to be within 1e-300.
    pub fn pvalue(&mut self, what: impl std::fmt::Display, actual: f64, expected: f64) {
        if expected < 1e-200 && (actual - expected).abs() <= 1e-300 {
            self.compared += 1;
            return;
        }
        self.close(what, actual, expected, PVALUE_TOL);
    }

    /// Both undefined, or both defined and close.
    pub fn opt_stat(
        &mut self,
        what: impl std::fmt::Display,
        actual: Option<f64>,
        expected: Option<f64>,
    ) {
        match (actual, expected) {
            (Some(a), Some(e)) => self.stat(what, a, e),
            (None, None) => self.compared += 1,
            (a, e) => self
                .failures
                .push(format!("{what}: got {a:?}, expected {e:?}")),
        }
    }

    pub fn slice(&mut self, what: impl std::fmt::Display, actual: &[f64], expected: &[f64]) {
        if actual.len() != expected.len() {
            self.failures.push(format!(
                "{what}: got {} values, expected {}",
                actual.len(),
                expected.len()
            ));
            return;
        }
        for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
            self.stat(format!("{what}[{i}]"), a, e);
        }
    }

    pub fn equal<T: PartialEq + std::fmt::Debug>(
        &mut self,
        what: impl std::fmt::Display,
        actual: T,
        expected: T,
    ) {
        self.compared += 1;
        if actual != expected {
            self.failures
                .push(format!("{what}: got {actual:?}, expected {expected:?}"));
        }
    }

    pub fn finish(self, min_compared: usize) {
        assert!(
            self.failures.is_empty(),
            "{} mismatches of {} comparisons:\n{}",
            self.failures.len(),
            self.compared,
            self.failures.join("\n")
        );
        assert!(
            self.compared >= min_compared,
            "only {} comparisons, expected at least {min_compared}",
            self.compared
        );
    }
}

/// JSON nulls are missing values.
pub fn nan_for_null(values: &[Option<f64>]) -> Vec<f64> {
    values.iter().map(|v| v.unwrap_or(f64::NAN)).collect()
}
