//! numpy's summation order, so that sums agree with numpy's to the last bits where it matters.

/// Below this many elements numpy sums with eight interleaved accumulators; above, it halves.
const PAIRWISE_BLOCK: usize = 128;

/// `np.sum` of a contiguous float64 array: numpy's pairwise summation (`pairwise_sum_DOUBLE` in
/// `loops_utils.h.src`). Its rounding error grows with log n instead of n, and matching its order
/// keeps means, standard deviations and chi-squared statistics within a few ulps of numpy's.
pub(crate) fn pairwise_sum(values: &[f64]) -> f64 {
    let n = values.len();
    if n < 8 {
        values.iter().fold(0.0, |acc, &v| acc + v)
    } else if n <= PAIRWISE_BLOCK {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&values[..8]);
        let whole = n - n % 8;
        for chunk in values[8..whole].chunks_exact(8) {
            for (acc, &v) in r.iter_mut().zip(chunk) {
                *acc += v;
            }
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &v in &values[whole..] {
            res += v;
        }
        res
    } else {
        let mut half = n / 2;
        half -= half % 8;
        pairwise_sum(&values[..half]) + pairwise_sum(&values[half..])
    }
}

/// `np.mean`: the pairwise sum divided by the count; `None` for no values.
pub(crate) fn mean(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    Some(pairwise_sum(values) / values.len() as f64)
}

/// `np.std(values)` (ddof 0), computed as numpy's `_var` does: the mean, the squared deviations,
/// their pairwise sum over n, and the square root. `None` for no values.
pub(crate) fn std_ddof0(values: &[f64]) -> Option<f64> {
    let mean = mean(values)?;
    let squares: Vec<f64> = values
        .iter()
        .map(|&v| {
            let d = v - mean;
            d * d
        })
        .collect();
    Some((pairwise_sum(&squares) / values.len() as f64).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairwise_sum_matches_plain_sum_on_exact_values() {
        for n in [0usize, 1, 7, 8, 9, 127, 128, 129, 1000, 1037] {
            let v: Vec<f64> = (0..n).map(|i| i as f64).collect();
            let expected = (n * n.saturating_sub(1) / 2) as f64;
            assert_eq!(pairwise_sum(&v), expected, "n = {n}");
        }
    }

    #[test]
    fn mean_and_std_of_nothing_are_undefined() {
        assert_eq!(mean(&[]), None);
        assert_eq!(std_ddof0(&[]), None);
        assert_eq!(std_ddof0(&[3.0, 3.0]), Some(0.0));
    }
}
