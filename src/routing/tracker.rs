//! What a candidate has done since it started: per-arm request and error counts, latency
//! histograms, and the shadow comparisons. Recorded on the request path with atomics only (no
//! lock); read by `rollout` to decide promotion or rollback.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use super::error_rate::ErrorTest;
pub use super::latency::LatencyTest;

/// Latency buckets grow by 2^(1/4) from 1 µs: ~19 % resolution, enough for a p99 ratio.
const BUCKETS: usize = 112;

/// Statistics of one candidate's trial, with its stable counterpart.
#[derive(Default)]
pub struct Tracker {
    /// Sequence of weighted picks, for a low-discrepancy split (exact shares, no RNG).
    pub(super) picks: AtomicU64,
    pub stable: ArmStats,
    pub candidate: ArmStats,
    pub shadow: ShadowStats,
    /// The latest run of the trial's tests (latency, see `latency`; error rate, see
    /// `error_rate`): a new run only once the candidate's requests have doubled since it.
    latest_run: parking_lot::Mutex<Option<(Option<LatencyTest>, ErrorTest)>>,
}

impl Tracker {
    /// The candidate's snapshot with its latency tested against the stable version's and its
    /// error rate against `max_error_rate`: the tests run when the candidate has `first_run`
    /// requests and again at each doubling, and between runs the latest results stand.
    pub fn candidate_snapshot(&self, first_run: u64, max_error_rate: f64) -> ArmSnapshot {
        self.judge(&self.counts(), first_run, max_error_rate).1
    }

    /// What this replica's request path and feedback counted, to be summed with other
    /// replicas' counts of the same trial.
    pub fn counts(&self) -> TrialCounts {
        TrialCounts {
            stable: self.stable.counts(),
            candidate: self.candidate.counts(),
            shadow: self.shadow.counts(),
        }
    }

    /// The snapshots of `counts` (this trial's, or their sum over the replicas): the stable
    /// arm's, the candidate's with its latency and error-rate tests (run when the candidate
    /// has `first_run` requests and again at each doubling, the latest results standing
    /// between runs), and the shadow comparisons.
    pub fn judge(
        &self,
        counts: &TrialCounts,
        first_run: u64,
        max_error_rate: f64,
    ) -> (ArmSnapshot, ArmSnapshot, ShadowSnapshot) {
        let snapshot = counts.candidate.snapshot();
        let mut latest = self.latest_run.lock();
        let due = match &*latest {
            None => snapshot.requests >= first_run.max(1),
            Some((_, e)) => snapshot.requests >= e.requests.saturating_mul(2),
        };
        if due {
            let look = latest.as_ref().map_or(1, |(_, e)| e.look + 1);
            let latency =
                super::latency::mann_whitney(&counts.candidate.latency, &counts.stable.latency)
                    .map(|test| LatencyTest { look, ..test });
            let errors =
                super::error_rate::above(snapshot.requests, snapshot.errors, max_error_rate, look);
            *latest = Some((latency, errors));
        }
        let candidate = ArmSnapshot {
            slower: latest.and_then(|(l, _)| l),
            error_test: latest.map(|(_, e)| e),
            ..snapshot
        };
        (
            counts.stable.snapshot(),
            candidate,
            counts.shadow.snapshot(),
        )
    }
}

/// A trial's counters as plain numbers: what a replica publishes of its trial and the
/// evaluator sums over replicas. Every field adds.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrialCounts {
    pub stable: ArmCounts,
    pub candidate: ArmCounts,
    pub shadow: ShadowCounts,
}

impl TrialCounts {
    pub fn add(&mut self, other: &TrialCounts) {
        self.stable.add(&other.stable);
        self.candidate.add(&other.candidate);
        self.shadow.add(&other.shadow);
    }
}

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ArmCounts {
    pub requests: u64,
    pub errors: u64,
    /// Requests per latency bucket (2^(i/4) µs); at most the tracker's number of buckets.
    pub latency: Vec<u64>,
    pub labelled: u64,
    pub correct: u64,
}

impl ArmCounts {
    /// Adds `other`'s counts. Buckets beyond the tracker's (from a file no replica of this
    /// build wrote) are not kept.
    pub fn add(&mut self, other: &ArmCounts) {
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        self.labelled = self.labelled.saturating_add(other.labelled);
        self.correct = self.correct.saturating_add(other.correct);
        let n = other.latency.len().min(BUCKETS);
        if self.latency.len() < n {
            self.latency.resize(n, 0);
        }
        for (mine, theirs) in self.latency.iter_mut().zip(&other.latency[..n]) {
            *mine = mine.saturating_add(*theirs);
        }
    }

    pub fn snapshot(&self) -> ArmSnapshot {
        ArmSnapshot {
            requests: self.requests,
            errors: self.errors,
            p99_us: quantile(&self.latency, 0.99),
            p50_us: quantile(&self.latency, 0.50),
            labelled: self.labelled,
            correct: self.correct,
            slower: None,
            error_test: None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ShadowCounts {
    pub sent: u64,
    pub errors: u64,
    pub compared: u64,
    pub rows: u64,
    pub rows_agreeing: u64,
    pub abs_diff_sum: f64,
    pub elements: u64,
    pub pairs: u64,
    pub stable_only: u64,
    pub candidate_only: u64,
}

impl ShadowCounts {
    pub fn add(&mut self, o: &ShadowCounts) {
        self.sent = self.sent.saturating_add(o.sent);
        self.errors = self.errors.saturating_add(o.errors);
        self.compared = self.compared.saturating_add(o.compared);
        self.rows = self.rows.saturating_add(o.rows);
        self.rows_agreeing = self.rows_agreeing.saturating_add(o.rows_agreeing);
        if o.abs_diff_sum.is_finite() {
            self.abs_diff_sum += o.abs_diff_sum;
        }
        self.elements = self.elements.saturating_add(o.elements);
        self.pairs = self.pairs.saturating_add(o.pairs);
        self.stable_only = self.stable_only.saturating_add(o.stable_only);
        self.candidate_only = self.candidate_only.saturating_add(o.candidate_only);
    }

    pub fn snapshot(&self) -> ShadowSnapshot {
        ShadowSnapshot {
            sent: self.sent,
            errors: self.errors,
            compared: self.compared,
            agreement: (self.rows > 0).then(|| self.rows_agreeing as f64 / self.rows as f64),
            mean_abs_diff: (self.elements > 0).then(|| self.abs_diff_sum / self.elements as f64),
            labelled_pairs: self.pairs,
            stable_only_correct: self.stable_only,
            candidate_only_correct: self.candidate_only,
        }
    }
}

/// One side of a trial.
pub struct ArmStats {
    requests: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU64; BUCKETS],
    /// Rows of this arm's answers that feedback has labelled since the trial began, and how
    /// many of those the arm got right (live quality, recorded by the feedback handler).
    labelled: AtomicU64,
    correct: AtomicU64,
}

impl Default for ArmStats {
    fn default() -> Self {
        ArmStats {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
            labelled: AtomicU64::new(0),
            correct: AtomicU64::new(0),
        }
    }
}

impl ArmStats {
    /// Counts one request; `ok` false for a server-side failure (engine error, timeout, full
    /// queue). A request the model refuses as invalid is not the version's fault and is not
    /// recorded.
    pub fn record(&self, ok: bool, took: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.latency[bucket(took)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts labelled rows of this arm's answers: `correct` of `labelled` were right.
    pub fn record_labels(&self, labelled: u64, correct: u64) {
        self.labelled.fetch_add(labelled, Ordering::Relaxed);
        self.correct.fetch_add(correct, Ordering::Relaxed);
    }

    /// Requests per latency bucket (2^(i/4) µs), the same buckets for every arm.
    pub fn latency_counts(&self) -> Vec<u64> {
        self.latency
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }

    pub fn snapshot(&self) -> ArmSnapshot {
        self.counts().snapshot()
    }

    pub fn counts(&self) -> ArmCounts {
        ArmCounts {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            latency: self.latency_counts(),
            labelled: self.labelled.load(Ordering::Relaxed),
            correct: self.correct.load(Ordering::Relaxed),
        }
    }
}

/// Shadow comparisons of the candidate's outputs with the stable version's.
#[derive(Default)]
pub struct ShadowStats {
    /// Requests copied to the candidate.
    sent: AtomicU64,
    /// Copies that failed on the candidate (or could not be queued).
    errors: AtomicU64,
    /// Copies compared with the stable answer.
    compared: AtomicU64,
    rows: AtomicU64,
    rows_agreeing: AtomicU64,
    /// Sum of absolute differences (f64 bits, updated by compare-and-swap) and elements.
    abs_diff_sum: AtomicU64,
    elements: AtomicU64,
    /// Labelled rows that both versions answered (the caller got the stable answer, the
    /// candidate scored a copy), and the discordant ones: right on one side only.
    pairs: AtomicU64,
    stable_only: AtomicU64,
    candidate_only: AtomicU64,
}

impl ShadowStats {
    pub fn record_sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_comparison(
        &self,
        rows: u64,
        rows_agreeing: u64,
        abs_diff_sum: f64,
        elements: u64,
    ) {
        self.compared.fetch_add(1, Ordering::Relaxed);
        self.rows.fetch_add(rows, Ordering::Relaxed);
        self.rows_agreeing
            .fetch_add(rows_agreeing, Ordering::Relaxed);
        self.elements.fetch_add(elements, Ordering::Relaxed);
        let _ = self
            .abs_diff_sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + abs_diff_sum).to_bits())
            });
    }

    /// Labelled pairs: `stable_only` right on the stable side only, `candidate_only` on the
    /// candidate's only.
    pub fn record_pairs(&self, pairs: u64, stable_only: u64, candidate_only: u64) {
        self.pairs.fetch_add(pairs, Ordering::Relaxed);
        self.stable_only.fetch_add(stable_only, Ordering::Relaxed);
        self.candidate_only
            .fetch_add(candidate_only, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> ShadowSnapshot {
        self.counts().snapshot()
    }

    pub fn counts(&self) -> ShadowCounts {
        ShadowCounts {
            sent: self.sent.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            compared: self.compared.load(Ordering::Relaxed),
            rows: self.rows.load(Ordering::Relaxed),
            rows_agreeing: self.rows_agreeing.load(Ordering::Relaxed),
            abs_diff_sum: f64::from_bits(self.abs_diff_sum.load(Ordering::Relaxed)),
            elements: self.elements.load(Ordering::Relaxed),
            pairs: self.pairs.load(Ordering::Relaxed),
            stable_only: self.stable_only.load(Ordering::Relaxed),
            candidate_only: self.candidate_only.load(Ordering::Relaxed),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct ArmSnapshot {
    pub requests: u64,
    pub errors: u64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub labelled: u64,
    pub correct: u64,
    /// The candidate's: whether its requests are slower than the stable version's over the
    /// whole trial (Mann-Whitney); see [`Tracker::candidate_snapshot`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slower: Option<LatencyTest>,
    /// The candidate's: whether its error rate is above `max_error_rate` (see `error_rate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_test: Option<ErrorTest>,
}

impl ArmSnapshot {
    /// Accuracy on the labelled rows; `None` before any.
    pub fn accuracy(&self) -> Option<f64> {
        (self.labelled > 0).then(|| self.correct as f64 / self.labelled as f64)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct ShadowSnapshot {
    pub sent: u64,
    pub errors: u64,
    pub compared: u64,
    /// Share of compared rows whose top class matched.
    pub agreement: Option<f64>,
    pub mean_abs_diff: Option<f64>,
    /// Rows with ground truth that both versions answered, and those right on one side only
    /// (McNemar's discordant pairs): what the paired accuracy test decides on.
    pub labelled_pairs: u64,
    pub stable_only_correct: u64,
    pub candidate_only_correct: u64,
}

fn bucket(took: Duration) -> usize {
    let us = took.as_secs_f64() * 1e6;
    if us <= 1.0 {
        return 0;
    }
    ((us.log2() * 4.0).ceil() as usize).min(BUCKETS - 1)
}

/// Upper bound of bucket `i`, in µs.
fn bucket_upper(i: usize) -> f64 {
    2f64.powf(i as f64 / 4.0)
}

fn quantile(counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (total as f64 * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, &c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return Some(bucket_upper(i));
        }
    }
    Some(bucket_upper(counts.len() - 1))
}

/// The counters are not part of a deployment's identity, nor worth printing.
impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A candidate that fails at exactly `max_error_rate` (1 %), the evaluator looking after
    /// every 10 requests up to 20,000: the error test, run at each doubling from 200 requests
    /// and judged at `alpha / 2^k`, calls its rate above the bound in at most `alpha` of the
    /// trials; the rate compared with the bound at every look would in most.
    #[test]
    fn the_error_test_keeps_its_level_however_often_the_evaluator_looks() {
        let (alpha, bound, trials) = (0.05, 0.01, 400);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut uniform = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
        };
        let (mut tested, mut thresholded) = (0, 0);
        for _ in 0..trials {
            let t = Tracker::default();
            let (mut above, mut past) = (false, false);
            for n in 1..=20_000u64 {
                t.candidate
                    .record(uniform() >= bound, Duration::from_millis(1));
                t.stable.record(true, Duration::from_millis(1));
                if n % 10 == 0 {
                    let s = t.candidate_snapshot(200, bound);
                    if let Some(e) = s.error_test {
                        above |= e.p_above < e.level(alpha);
                    }
                    past |= n >= 200 && s.errors as f64 / s.requests as f64 > bound;
                }
            }
            tested += u32::from(above);
            thresholded += u32::from(past);
        }
        let (tested, thresholded) = (
            f64::from(tested) / f64::from(trials),
            f64::from(thresholded) / f64::from(trials),
        );
        println!(
            "error rate at the bound, {trials} trials: called above it {tested:.4} (runs at \
             doublings, alpha / 2^k), past it at some look {thresholded:.4}"
        );
        let slack = 3.0 * (alpha * (1.0 - alpha) / f64::from(trials)).sqrt();
        assert!(tested <= alpha + slack, "{tested}");
        assert!(thresholded > 0.5, "{thresholded}");
    }

    /// Two arms with the same latencies, the evaluator looking after every 10 candidate
    /// requests up to 4,000: the test, run at each doubling and judged at `alpha / 2^k`, calls
    /// the candidate slower in at most `alpha` of the trials; run at every look at `alpha`, it
    /// would in far more (the figures print with `--nocapture`).
    #[test]
    fn the_latency_test_keeps_its_level_however_often_the_evaluator_looks() {
        let alpha = 0.05;
        let trials = 400;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut uniform = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
        };
        // Log-normal latencies around 1 ms.
        let mut draw = || {
            let (u, v) = (uniform().max(1e-12), uniform());
            let z = (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos();
            Duration::from_secs_f64(1e-3 * (0.5 * z).exp())
        };
        let (mut corrected, mut every_look) = (0, 0);
        for _ in 0..trials {
            let t = Tracker::default();
            let (mut slower, mut slower_at_any_look) = (false, false);
            for n in 1..=4_000u64 {
                t.candidate.record(true, draw());
                t.stable.record(true, draw());
                if n % 10 == 0 {
                    let s = t.candidate_snapshot(100, 0.01);
                    if let Some(test) = s.slower {
                        slower |= test.p_slower < test.level(alpha);
                    }
                    let raw = super::super::latency::mann_whitney(
                        &t.candidate.latency_counts(),
                        &t.stable.latency_counts(),
                    );
                    slower_at_any_look |= n >= 100 && raw.is_some_and(|r| r.p_slower < alpha);
                }
            }
            corrected += u32::from(slower);
            every_look += u32::from(slower_at_any_look);
        }
        let (corrected, every_look) = (
            f64::from(corrected) / f64::from(trials),
            f64::from(every_look) / f64::from(trials),
        );
        println!(
            "same latencies, {trials} trials: called slower {corrected:.4} (runs at doublings, \
             alpha / 2^k), {every_look:.4} (every look at alpha)"
        );
        let slack = 3.0 * (alpha * (1.0 - alpha) / f64::from(trials)).sqrt();
        assert!(corrected <= alpha + slack, "{corrected}");
        assert!(every_look > corrected, "{every_look} {corrected}");
    }

    #[test]
    fn quantiles_within_a_bucket() {
        let arm = ArmStats::default();
        for i in 0..1000u64 {
            arm.record(i % 100 != 0, Duration::from_micros(100 + i % 10));
        }
        arm.record(true, Duration::from_millis(50));
        let s = arm.snapshot();
        assert_eq!(s.requests, 1001);
        assert_eq!(s.errors, 10);
        let p50 = s.p50_us.unwrap();
        assert!((100.0..=130.0).contains(&p50), "{p50}");
        let p99 = s.p99_us.unwrap();
        assert!((100.0..=130.0).contains(&p99), "{p99}");
    }

    #[test]
    fn shadow_agreement_and_difference() {
        let s = ShadowStats::default();
        s.record_sent();
        s.record_comparison(4, 3, 0.5, 10);
        s.record_comparison(4, 4, 0.5, 10);
        let snap = s.snapshot();
        assert_eq!(snap.compared, 2);
        assert_eq!(snap.agreement, Some(7.0 / 8.0));
        assert_eq!(snap.mean_abs_diff, Some(0.05));
    }
}
