//! The promotion and rollback rule, as a pure function of a candidate's trial. Every outcome
//! says why, waiting included: what is still missing, and for the sequential accuracy test how
//! many more labelled rows it needs.

use super::sequential::{self, Arm};
use crate::config::{AccuracyTest, RolloutConfig};
use crate::routing::{ArmSnapshot, ShadowSnapshot};

/// What to do with a candidate now, and why.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Wait(String),
    Promote(String),
    Rollback(String),
}

/// Stable-side samples needed before a latency ratio means anything.
const MIN_STABLE_SAMPLES: u64 = 20;

/// Decides from the trial so far. Within its first `min_requests` requests the candidate's errors
/// roll it back as soon as they exceed that window's budget (the window's error rate can no
/// longer stay under `max_error_rate`); past them its error rate is judged like every other
/// criterion. (A budget counted over a longer trial would roll back any candidate that fails at
/// all, given time: a trial waiting for labels runs long.)
pub fn decide(
    c: &RolloutConfig,
    shadow_mode: bool,
    stable: &ArmSnapshot,
    candidate: &ArmSnapshot,
    shadow: &ShadowSnapshot,
) -> Decision {
    let budget = (c.max_error_rate * c.min_requests as f64).floor() as u64;
    if c.auto_rollback && candidate.errors > budget && candidate.requests <= c.min_requests {
        return Decision::Rollback(format!(
            "{} failed requests out of {} exceed the error budget of {budget} for {} requests \
             (max_error_rate {})",
            candidate.errors, candidate.requests, c.min_requests, c.max_error_rate
        ));
    }
    let trial = if shadow_mode {
        shadow.compared + shadow.errors
    } else {
        candidate.requests
    };
    if trial < c.min_requests {
        return Decision::Wait(format!(
            "{trial} of the {} {} needed before anything is decided",
            c.min_requests,
            if shadow_mode {
                "comparisons"
            } else {
                "candidate requests"
            }
        ));
    }
    let mut misses = Vec::new();
    let error_rate = candidate.errors as f64 / candidate.requests.max(1) as f64;
    let error_wait = error_criterion(c, error_rate, candidate, &mut misses);
    let latency = latency_criterion(c, stable, candidate, &mut misses);
    let mut agreement_note = String::new();
    if shadow_mode {
        if let Some(a) = shadow.agreement {
            agreement_note = format!(", agreement {a:.4}");
            if a < c.min_agreement {
                misses.push(format!(
                    "top-class agreement {a:.4} < min_agreement {}",
                    c.min_agreement
                ));
            }
        }
        if let (Some(max), Some(d)) = (c.max_mean_abs_diff, shadow.mean_abs_diff) {
            if d > max {
                misses.push(format!(
                    "mean absolute difference {d:.6} > max_mean_abs_diff {max}"
                ));
            }
        }
    }
    // Live quality: the candidate's accuracy on rows with feedback against the stable
    // version's, over the same trial: on different rows for a canary, on the same rows (a
    // shadow scores a copy of each request) in shadow mode.
    let mut quality_note = String::new();
    let mut waiting_for_labels = None;
    if let Some(max_drop) = c.max_accuracy_drop {
        let judged = if shadow_mode {
            paired_quality(c, max_drop, shadow)
        } else {
            quality(c, max_drop, stable, candidate)
        };
        match judged {
            Quality::Pass(note) => quality_note = note,
            Quality::Miss(why) => misses.push(why),
            Quality::Wait(why) => waiting_for_labels = Some(why),
        }
    }
    if !misses.is_empty() {
        return if c.auto_rollback {
            Decision::Rollback(misses.join("; "))
        } else {
            Decision::Wait(format!("{}; auto_rollback is off", misses.join("; ")))
        };
    }
    if let Some(why) = error_wait.or(waiting_for_labels) {
        return Decision::Wait(why);
    }
    if c.auto_promote {
        Decision::Promote(format!(
            "{trial} {} met every criterion: error rate {error_rate:.4}{latency}{agreement_note}\
             {quality_note}",
            if shadow_mode {
                "comparisons"
            } else {
                "requests"
            }
        ))
    } else {
        Decision::Wait("every criterion is met; auto_promote is off".into())
    }
}

/// The error-rate criterion: a rate past `max_error_rate` rolls the candidate back only where
/// the trial's test (its run's share of `alpha`) shows it above the bound too, and holds the
/// trial (the reason returned) where it does not yet; without a run yet (fewer than
/// `min_requests` candidate requests), the rate alone.
fn error_criterion(
    c: &RolloutConfig,
    error_rate: f64,
    candidate: &ArmSnapshot,
    misses: &mut Vec<String>,
) -> Option<String> {
    if error_rate <= c.max_error_rate {
        return None;
    }
    match candidate.error_test {
        Some(t) if t.p_above >= t.level(c.alpha) => {
            return Some(format!(
                "error rate {error_rate:.4} is past max_error_rate {} but not shown above it \
                 ({} failures in {} requests: one-sided p {:.4}, run {} judged at {:.4}); the \
                 next run is at {} requests",
                c.max_error_rate,
                t.errors,
                t.requests,
                t.p_above,
                t.look,
                t.level(c.alpha),
                t.requests.saturating_mul(2)
            ))
        }
        Some(t) => misses.push(format!(
            "error rate {error_rate:.4} > max_error_rate {} ({} failures in {} requests: one-sided \
             p {:.4} that the rate is above the bound, run {} of the trial, judged at alpha / \
             2^{} = {:.4})",
            c.max_error_rate,
            t.errors,
            t.requests,
            t.p_above,
            t.look,
            t.look,
            t.level(c.alpha)
        )),
        None => misses.push(format!(
            "error rate {error_rate:.4} > max_error_rate {}",
            c.max_error_rate
        )),
    }
    None
}

/// The p99 criterion, judged with the whole trial's latencies: its note for the reason, and a
/// miss pushed where the candidate is too slow.
fn latency_criterion(
    c: &RolloutConfig,
    stable: &ArmSnapshot,
    candidate: &ArmSnapshot,
    misses: &mut Vec<String>,
) -> String {
    let mut latency = String::new();
    if let (Some(cp), Some(sp)) = (candidate.p99_us, stable.p99_us) {
        if stable.requests < MIN_STABLE_SAMPLES || sp <= 0.0 {
            latency = format!(
                ", p99 not judged ({} stable requests, {MIN_STABLE_SAMPLES} needed)",
                stable.requests
            );
        } else {
            let ratio = cp / sp;
            let test = candidate.slower.map_or(String::new(), |t| {
                format!(
                    " (Mann-Whitney over {} and {} requests: AUC {:.3}, one-sided p {:.4}, run \
                     {} of the trial, judged at alpha / 2^{} = {:.4})",
                    t.candidate_requests,
                    t.stable_requests,
                    t.auc,
                    t.p_slower,
                    t.look,
                    t.look,
                    t.level(c.alpha)
                )
            });
            latency = format!(", p99 ratio {ratio:.2}{test}");
            // Over a few dozen requests a p99 is their maximum: a ratio past the limit counts
            // only where the whole trial's latencies say the candidate is slower too, at this
            // run's share of alpha (the shares sum to alpha over the trial).
            let noise = candidate
                .slower
                .is_some_and(|t| t.p_slower >= t.level(c.alpha));
            if ratio > c.max_p99_ratio && noise {
                latency = format!(
                    ", p99 ratio {ratio:.2} past max_p99_ratio {} but the candidate is not shown \
                     slower{test}",
                    c.max_p99_ratio
                );
            } else if ratio > c.max_p99_ratio {
                misses.push(format!(
                    "p99 latency {cp:.0} µs is {ratio:.2}× the stable {sp:.0} µs > max_p99_ratio \
                     {}{test}",
                    c.max_p99_ratio
                ));
            }
        }
    }
    latency
}

/// What live accuracy says so far.
enum Quality {
    Pass(String),
    Miss(String),
    Wait(String),
}

/// The sequential test's interval for a trial, `(estimate, low, high)`, once it has
/// `min_labelled` rows (per arm; in shadow mode, pairs); `None` under the threshold test or
/// without a margin.
pub fn accuracy_interval(
    c: &RolloutConfig,
    shadow_mode: bool,
    stable: &ArmSnapshot,
    candidate: &ArmSnapshot,
    shadow: &ShadowSnapshot,
) -> Option<(f64, f64, f64)> {
    let margin = c.max_accuracy_drop?;
    if c.accuracy_test != AccuracyTest::Sequential {
        return None;
    }
    let rho2 = sequential::rho_squared(c.alpha, sequential::planned_rows(c.alpha, margin));
    let iv = if shadow_mode {
        if shadow.labelled_pairs < c.min_labelled {
            return None;
        }
        let pairs = sequential::Pairs {
            pairs: shadow.labelled_pairs,
            stable_only: shadow.stable_only_correct,
            candidate_only: shadow.candidate_only_correct,
        };
        sequential::paired_interval(pairs, c.alpha, rho2)
    } else {
        if candidate.labelled < c.min_labelled || stable.labelled < c.min_labelled {
            return None;
        }
        let arm = |a: &ArmSnapshot| Arm {
            correct: a.correct,
            labelled: a.labelled,
        };
        sequential::interval(arm(candidate), arm(stable), c.alpha, rho2)
    };
    iv.map(|iv| (iv.estimate, iv.low, iv.high))
}

fn quality(
    c: &RolloutConfig,
    max_drop: f64,
    stable: &ArmSnapshot,
    candidate: &ArmSnapshot,
) -> Quality {
    let enough = candidate.labelled >= c.min_labelled && stable.labelled >= c.min_labelled;
    let (Some(ca), Some(sa), true) = (candidate.accuracy(), stable.accuracy(), enough) else {
        return Quality::Wait(format!(
            "waiting for labelled rows: {} candidate and {} stable of min_labelled {} each",
            candidate.labelled, stable.labelled, c.min_labelled
        ));
    };
    if c.accuracy_test == AccuracyTest::Threshold {
        return if ca < sa - max_drop {
            Quality::Miss(format!(
                "accuracy {ca:.4} on {} labelled rows is more than max_accuracy_drop \
                 {max_drop} below the stable version's {sa:.4} on {}",
                candidate.labelled, stable.labelled
            ))
        } else {
            Quality::Pass(format!(", accuracy {ca:.4} against stable {sa:.4}"))
        };
    }
    let (cand, stab) = (
        Arm {
            correct: candidate.correct,
            labelled: candidate.labelled,
        },
        Arm {
            correct: stable.correct,
            labelled: stable.labelled,
        },
    );
    let rho2 = sequential::rho_squared(c.alpha, sequential::planned_rows(c.alpha, max_drop));
    let iv = sequential::interval(cand, stab, c.alpha, rho2).expect("both arms have rows");
    let evidence = format!(
        "accuracy {ca:.4} ({} rows) against stable {sa:.4} ({} rows): difference {:+.4}, \
         {:.0} % anytime interval [{:+.4}, {:+.4}]",
        candidate.labelled,
        stable.labelled,
        iv.estimate,
        100.0 * (1.0 - c.alpha),
        iv.low,
        iv.high
    );
    judge(c, max_drop, iv, evidence, || {
        sequential::rows_to_decide(cand, stab, c.alpha, rho2, max_drop / 2.0)
    })
}

/// Live quality on rows both versions answered (shadow mode): the candidate's and the stable
/// version's answers to the same requests, against the same ground truth.
fn paired_quality(c: &RolloutConfig, max_drop: f64, shadow: &ShadowSnapshot) -> Quality {
    if shadow.labelled_pairs < c.min_labelled {
        return Quality::Wait(format!(
            "waiting for labelled rows that both versions answered: {} of min_labelled {}",
            shadow.labelled_pairs, c.min_labelled
        ));
    }
    let pairs = sequential::Pairs {
        pairs: shadow.labelled_pairs,
        stable_only: shadow.stable_only_correct,
        candidate_only: shadow.candidate_only_correct,
    };
    let rho2 = sequential::rho_squared(c.alpha, sequential::planned_rows(c.alpha, max_drop));
    let iv = sequential::paired_interval(pairs, c.alpha, rho2).expect("there are pairs");
    let counts = format!(
        "on {} labelled rows both versions answered, the candidate alone was right on {} and \
         the stable version alone on {} (McNemar's discordant pairs): difference {:+.4}",
        pairs.pairs, pairs.candidate_only, pairs.stable_only, iv.estimate
    );
    if c.accuracy_test == AccuracyTest::Threshold {
        return if iv.estimate < -max_drop {
            Quality::Miss(format!(
                "{counts}, more than max_accuracy_drop {max_drop} below"
            ))
        } else {
            Quality::Pass(format!(", {counts}"))
        };
    }
    let evidence = format!(
        "{counts}, {:.0} % anytime interval [{:+.4}, {:+.4}]",
        100.0 * (1.0 - c.alpha),
        iv.low,
        iv.high
    );
    judge(c, max_drop, iv, evidence, || {
        sequential::paired_rows_to_decide(pairs, c.alpha, rho2, max_drop / 2.0)
    })
}

/// The sequential rule on an interval: promote above `-max_drop`, roll back below 0, else wait
/// and say for how many more rows (`more`, computed only then).
fn judge(
    c: &RolloutConfig,
    max_drop: f64,
    iv: sequential::Interval,
    evidence: String,
    more: impl FnOnce() -> u64,
) -> Quality {
    if iv.low > -max_drop {
        Quality::Pass(format!(
            ", {evidence} above -max_accuracy_drop {max_drop} (a candidate worse by that is \
             promoted with probability at most alpha {})",
            c.alpha
        ))
    } else if iv.high < 0.0 {
        Quality::Miss(format!(
            "{evidence}: worse than stable, and not shown within max_accuracy_drop {max_drop} (a \
             candidate as good as stable or better is rolled back with probability at most \
             alpha {})",
            c.alpha
        ))
    } else {
        // The trial must end once the interval is narrower than the margin.
        Quality::Wait(format!(
            "{evidence} reaches below -{max_drop} and above 0: needs at most about {} more \
             labelled rows",
            more()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm(requests: u64, errors: u64, p99: f64) -> ArmSnapshot {
        ArmSnapshot {
            requests,
            errors,
            p50_us: Some(p99 / 2.0),
            p99_us: Some(p99),
            ..ArmSnapshot::default()
        }
    }

    fn criteria() -> RolloutConfig {
        RolloutConfig {
            min_requests: 100,
            ..RolloutConfig::default()
        }
    }

    #[test]
    fn waits_then_promotes_a_good_canary() {
        let c = criteria();
        let none = ShadowSnapshot::default();
        assert_eq!(
            decide(&c, false, &arm(500, 0, 100.0), &arm(50, 0, 110.0), &none),
            Decision::Wait(
                "50 of the 100 candidate requests needed before anything is decided".into()
            )
        );
        let d = decide(&c, false, &arm(900, 0, 100.0), &arm(100, 1, 150.0), &none);
        assert!(
            matches!(d, Decision::Promote(ref r) if r.contains("100 requests")),
            "{d:?}"
        );
    }

    #[test]
    fn errors_roll_back_early() {
        let c = criteria();
        let d = decide(
            &c,
            false,
            &arm(50, 0, 100.0),
            &arm(5, 2, 100.0),
            &ShadowSnapshot::default(),
        );
        assert!(
            matches!(d, Decision::Rollback(ref r) if r.contains("error budget")),
            "{d:?}"
        );
        // Past the window, the budget no longer counts: 5 failures in 1,000 requests is an
        // error rate of 0.005, under max_error_rate 0.01.
        let d = decide(
            &c,
            false,
            &arm(5_000, 0, 100.0),
            &arm(1_000, 5, 100.0),
            &ShadowSnapshot::default(),
        );
        assert!(matches!(d, Decision::Promote(_)), "{d:?}");
    }

    #[test]
    fn slow_or_disagreeing_candidates_roll_back() {
        let c = RolloutConfig {
            max_mean_abs_diff: Some(0.01),
            ..criteria()
        };
        let d = decide(
            &c,
            false,
            &arm(900, 0, 100.0),
            &arm(100, 0, 300.0),
            &ShadowSnapshot::default(),
        );
        assert!(
            matches!(d, Decision::Rollback(ref r) if r.contains("max_p99_ratio")),
            "{d:?}"
        );
        let shadow = ShadowSnapshot {
            sent: 100,
            errors: 0,
            compared: 100,
            agreement: Some(0.5),
            mean_abs_diff: Some(0.2),
            ..ShadowSnapshot::default()
        };
        let d = decide(&c, true, &arm(100, 0, 100.0), &arm(100, 0, 100.0), &shadow);
        let Decision::Rollback(r) = d else {
            panic!("rollback expected")
        };
        assert!(
            r.contains("agreement 0.5000") && r.contains("mean absolute difference"),
            "{r}"
        );
    }

    #[test]
    fn a_p99_ratio_rolls_back_only_where_the_whole_trial_is_slower() {
        use crate::routing::LatencyTest;
        let c = criteria();
        let none = ShadowSnapshot::default();
        let test = |p_slower| LatencyTest {
            auc: 0.5,
            p_slower,
            candidate_requests: 100,
            stable_requests: 900,
            look: 1,
        };
        let mut candidate = arm(100, 0, 300.0);
        candidate.slower = Some(test(0.4));
        let d = decide(&c, false, &arm(900, 0, 100.0), &candidate, &none);
        assert!(
            matches!(&d, Decision::Promote(r) if r.contains("not shown slower")
                && r.contains("one-sided p 0.4000")),
            "{d:?}"
        );
        // Below alpha but not below the first run's share of it (alpha / 2).
        candidate.slower = Some(test(0.03));
        let d = decide(&c, false, &arm(900, 0, 100.0), &candidate, &none);
        assert!(
            matches!(&d, Decision::Promote(r) if r.contains("judged at alpha / 2^1 = 0.0250")),
            "{d:?}"
        );
        candidate.slower = Some(test(0.001));
        let d = decide(&c, false, &arm(900, 0, 100.0), &candidate, &none);
        assert!(
            matches!(&d, Decision::Rollback(r) if r.contains("max_p99_ratio")
                && r.contains("Mann-Whitney over 100 and 900 requests")),
            "{d:?}"
        );
    }

    #[test]
    fn an_error_rate_past_the_bound_rolls_back_only_once_shown_above_it() {
        use crate::routing::ErrorTest;
        let c = criteria();
        let none = ShadowSnapshot::default();
        let mut candidate = arm(400, 6, 100.0);
        candidate.error_test = Some(ErrorTest {
            requests: 400,
            errors: 6,
            p_above: 0.21,
            look: 2,
        });
        let d = decide(&c, false, &arm(3_600, 0, 100.0), &candidate, &none);
        assert!(
            matches!(&d, Decision::Wait(r) if r.contains("not shown above it")
                && r.contains("next run is at 800 requests")),
            "{d:?}"
        );
        candidate.error_test = Some(ErrorTest {
            p_above: 0.001,
            ..candidate.error_test.unwrap()
        });
        let d = decide(&c, false, &arm(3_600, 0, 100.0), &candidate, &none);
        assert!(
            matches!(&d, Decision::Rollback(r) if r.contains("6 failures in 400 requests")
                && r.contains("alpha / 2^2 = 0.0125")),
            "{d:?}"
        );
    }

    #[test]
    fn manual_mode_only_waits() {
        let c = RolloutConfig {
            auto_promote: false,
            auto_rollback: false,
            ..criteria()
        };
        let none = ShadowSnapshot::default();
        let waits = |d: Decision, why: &str| {
            assert!(matches!(&d, Decision::Wait(r) if r.contains(why)), "{d:?}")
        };
        waits(
            decide(&c, false, &arm(900, 0, 100.0), &arm(100, 50, 900.0), &none),
            "auto_rollback is off",
        );
        waits(
            decide(&c, false, &arm(900, 0, 100.0), &arm(100, 0, 100.0), &none),
            "auto_promote is off",
        );
    }

    #[test]
    fn live_accuracy_waits_for_labels_then_promotes_or_rolls_back() {
        let c = RolloutConfig {
            min_requests: 100,
            max_accuracy_drop: Some(0.05),
            min_labelled: 50,
            ..RolloutConfig::default()
        };
        let none = ShadowSnapshot::default();
        let labelled = |mut a: ArmSnapshot, n: u64, right: u64| {
            a.labelled = n;
            a.correct = right;
            a
        };
        let stable = labelled(arm(900, 0, 100.0), 400, 300);
        // Enough requests but too few labels: wait.
        let few = labelled(arm(100, 0, 100.0), 10, 10);
        assert!(matches!(
            decide(&c, false, &stable, &few, &none),
            Decision::Wait(r) if r.contains("10 candidate and 400 stable of min_labelled 50")
        ));
        // Within the margin (0.72 against 0.75): promote, saying so.
        let near = labelled(arm(100, 0, 100.0), 50, 36);
        match decide(&c, false, &stable, &near, &none) {
            Decision::Promote(r) => {
                assert!(r.contains("accuracy 0.7200 against stable 0.7500"), "{r}")
            }
            other => panic!("{other:?}"),
        }
        // Worse by more than the margin: roll back.
        let worse = labelled(arm(100, 0, 100.0), 50, 30);
        match decide(&c, false, &stable, &worse, &none) {
            Decision::Rollback(r) => assert!(r.contains("max_accuracy_drop"), "{r}"),
            other => panic!("{other:?}"),
        }
    }

    /// Uniform draws in [0, 1) from xorshift64*: deterministic, no dependency.
    fn uniform(mut state: u64) -> impl FnMut() -> f64 {
        move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// (promoted, rolled back, undecided) as shares of the trials, and the mean rows at
    /// decision.
    fn rates(trials: u32, promoted: u32, rolled_back: u32, undecided: u32, rows: u64) -> [f64; 4] {
        let n = f64::from(trials);
        [
            f64::from(promoted) / n,
            f64::from(rolled_back) / n,
            f64::from(undecided) / n,
            rows as f64 / n,
        ]
    }

    /// Labelled trials drawn from binomials with a known true difference, judged by `decide`
    /// after every 20 labelled rows (10 per arm, a canary at weight 0.5), until it decides or
    /// 40,000 rows have come. Returns (promoted, rolled back, undecided, mean rows at decision).
    fn simulate(c: &RolloutConfig, stable_p: f64, candidate_p: f64, trials: u32) -> [f64; 4] {
        let mut uniform = uniform(0x9e37_79b9_7f4a_7c15);
        let none = ShadowSnapshot::default();
        let (mut promoted, mut rolled_back, mut undecided, mut rows) = (0u32, 0u32, 0u32, 0u64);
        for _ in 0..trials {
            let mut stable = arm(1_000, 0, 100.0);
            let mut candidate = arm(1_000, 0, 100.0);
            loop {
                for _ in 0..10 {
                    stable.labelled += 1;
                    stable.correct += u64::from(uniform() < stable_p);
                    candidate.labelled += 1;
                    candidate.correct += u64::from(uniform() < candidate_p);
                }
                match decide(c, false, &stable, &candidate, &none) {
                    Decision::Promote(_) => promoted += 1,
                    Decision::Rollback(_) => rolled_back += 1,
                    Decision::Wait(_) if stable.labelled >= 20_000 => undecided += 1,
                    Decision::Wait(_) => continue,
                }
                rows += stable.labelled + candidate.labelled;
                break;
            }
        }
        rates(trials, promoted, rolled_back, undecided, rows)
    }

    fn sequential(margin: f64, alpha: f64) -> RolloutConfig {
        RolloutConfig {
            min_requests: 100,
            max_accuracy_drop: Some(margin),
            min_labelled: 30,
            accuracy_test: AccuracyTest::Sequential,
            alpha,
            ..RolloutConfig::default()
        }
    }

    /// The stated error rates, measured: 2,000 simulated trials per case, the evaluator looking
    /// after every 20 labelled rows. A candidate worse by the margin must be promoted, and one
    /// as good as stable rolled back, in at most `alpha` of trials (with three standard errors of
    /// slack for the simulation's own noise). The figures are in README ("How a canary is
    /// judged"); `cargo test --lib rollout::decide -- --nocapture` prints them.
    #[test]
    fn sequential_accuracy_keeps_its_error_rates_however_often_it_looks() {
        let trials = 2_000;
        for (margin, alpha) in [(0.05, 0.05), (0.1, 0.05), (0.05, 0.01)] {
            let c = sequential(margin, alpha);
            let slack = 3.0 * (alpha * (1.0 - alpha) / f64::from(trials)).sqrt();
            let worse = simulate(&c, 0.85, 0.85 - margin, trials);
            let better = simulate(&c, 0.80, 0.80 + margin, trials);
            let equal = simulate(&c, 0.85, 0.85, trials);
            let half = simulate(&c, 0.85, 0.85 - margin / 2.0, trials);
            println!(
                "margin {margin}, alpha {alpha}: worse by the margin: promoted {:.4} (rows {:.0}); \
                 equal: rolled back {:.4} (rows {:.0}); better by the margin: rolled back {:.4} \
                 (rows {:.0}); worse by half the margin: promoted {:.4}, rolled back {:.4} (rows \
                 {:.0})",
                worse[0], worse[3], equal[1], equal[3], better[1], better[3], half[0], half[1],
                half[3]
            );
            assert!(worse[0] <= alpha + slack, "wrong promotions {}", worse[0]);
            assert!(equal[1] <= alpha + slack, "wrong rollbacks {}", equal[1]);
            assert!(better[1] <= alpha + slack, "wrong rollbacks {}", better[1]);
            // Every trial ends: the interval narrows below the margin.
            assert_eq!(worse[2] + better[2] + equal[2] + half[2], 0.0);
        }
    }

    /// Paired trials (shadow mode): every labelled row is answered by both versions, right on
    /// the stable side only with probability `stable_only` and on the candidate's only with
    /// `candidate_only`; judged after every 20 pairs until a decision or 40,000 pairs. Returns
    /// (promoted, rolled back, undecided, mean pairs at decision).
    fn simulate_paired(
        c: &RolloutConfig,
        stable_only: f64,
        candidate_only: f64,
        trials: u32,
    ) -> [f64; 4] {
        let mut uniform = uniform(0x2545_f491_4f6c_dd1d);
        let arms = arm(1_000, 0, 100.0);
        let (mut promoted, mut rolled_back, mut undecided, mut rows) = (0u32, 0u32, 0u32, 0u64);
        for _ in 0..trials {
            let mut shadow = ShadowSnapshot {
                compared: 1_000,
                ..ShadowSnapshot::default()
            };
            loop {
                for _ in 0..20 {
                    shadow.labelled_pairs += 1;
                    let u = uniform();
                    if u < stable_only {
                        shadow.stable_only_correct += 1;
                    } else if u < stable_only + candidate_only {
                        shadow.candidate_only_correct += 1;
                    }
                }
                match decide(c, true, &arms, &arms, &shadow) {
                    Decision::Promote(_) => promoted += 1,
                    Decision::Rollback(_) => rolled_back += 1,
                    Decision::Wait(_) if shadow.labelled_pairs >= 40_000 => undecided += 1,
                    Decision::Wait(_) => continue,
                }
                rows += shadow.labelled_pairs;
                break;
            }
        }
        rates(trials, promoted, rolled_back, undecided, rows)
    }

    /// The paired design's stated error rates, measured as the unpaired ones are: 2,000 trials
    /// per case, two levels of disagreement between the versions (10 % and 30 % of rows
    /// discordant when they are equally good).
    #[test]
    fn paired_accuracy_keeps_its_error_rates_and_needs_fewer_rows() {
        let trials = 2_000;
        for (margin, alpha, discordant) in [(0.05, 0.05, 0.1), (0.05, 0.05, 0.3), (0.02, 0.05, 0.1)]
        {
            let c = sequential(margin, alpha);
            let slack = 3.0 * (alpha * (1.0 - alpha) / f64::from(trials)).sqrt();
            let half = discordant / 2.0;
            let worse = simulate_paired(&c, half + margin / 2.0, half - margin / 2.0, trials);
            let equal = simulate_paired(&c, half, half, trials);
            let better = simulate_paired(&c, half - margin / 2.0, half + margin / 2.0, trials);
            println!(
                "paired, margin {margin}, alpha {alpha}, {discordant} discordant: worse by the \
                 margin: promoted {:.4} (pairs {:.0}); equal: rolled back {:.4}, promoted {:.4} \
                 (pairs {:.0}); better by the margin: rolled back {:.4} (pairs {:.0})",
                worse[0], worse[3], equal[1], equal[0], equal[3], better[1], better[3]
            );
            assert!(worse[0] <= alpha + slack, "wrong promotions {}", worse[0]);
            assert!(equal[1] <= alpha + slack, "wrong rollbacks {}", equal[1]);
            assert!(better[1] <= alpha + slack, "wrong rollbacks {}", better[1]);
            assert_eq!(worse[2] + equal[2] + better[2], 0.0, "every trial ends");
        }
    }

    #[test]
    fn shadow_mode_judges_accuracy_on_pairs_and_says_so() {
        let c = sequential(0.05, 0.05);
        let arms = arm(1_000, 0, 100.0);
        let pairs = |n: u64, b: u64, cc: u64| ShadowSnapshot {
            compared: 1_000,
            labelled_pairs: n,
            stable_only_correct: b,
            candidate_only_correct: cc,
            ..ShadowSnapshot::default()
        };
        let d = decide(&c, true, &arms, &arms, &pairs(10, 0, 0));
        assert!(
            matches!(&d, Decision::Wait(w) if w.contains("both versions answered: 10 of min_labelled 30")),
            "{d:?}"
        );
        // 2,000 pairs, the candidate alone right on 150 and stable alone on 50: +5 points.
        let d = decide(&c, true, &arms, &arms, &pairs(2_000, 50, 150));
        assert!(
            matches!(&d, Decision::Promote(r) if r.contains("McNemar") && r.contains("+0.0500")),
            "{d:?}"
        );
        let d = decide(&c, true, &arms, &arms, &pairs(2_000, 250, 50));
        assert!(
            matches!(&d, Decision::Rollback(r) if r.contains("-0.1000")),
            "{d:?}"
        );
        let (estimate, _, _) =
            accuracy_interval(&c, true, &arms, &arms, &pairs(2_000, 50, 150)).unwrap();
        assert!((estimate - 0.05).abs() < 1e-12);
    }

    #[test]
    fn the_interval_is_exported_only_under_the_sequential_test() {
        let labelled = |n: u64, right: u64| ArmSnapshot {
            labelled: n,
            correct: right,
            ..arm(1_000, 0, 100.0)
        };
        let (stable, candidate) = (labelled(500, 400), labelled(500, 425));
        let c = sequential(0.05, 0.05);
        let none = ShadowSnapshot::default();
        let (estimate, low, high) =
            accuracy_interval(&c, false, &stable, &candidate, &none).unwrap();
        assert!((estimate - 0.05).abs() < 1e-12 && low < estimate && estimate < high);
        let threshold = RolloutConfig {
            accuracy_test: AccuracyTest::Threshold,
            ..c.clone()
        };
        assert_eq!(
            accuracy_interval(&threshold, false, &stable, &candidate, &none),
            None
        );
        let early = labelled(20, 18);
        assert_eq!(accuracy_interval(&c, false, &stable, &early, &none), None);
    }

    #[test]
    fn sequential_accuracy_explains_itself_while_it_waits_and_when_it_decides() {
        let c = sequential(0.05, 0.05);
        let none = ShadowSnapshot::default();
        let labelled = |n: u64, right: u64| ArmSnapshot {
            labelled: n,
            correct: right,
            ..arm(1_000, 0, 100.0)
        };
        // 500 rows each, 0.834 against 0.853: the threshold rule would promote; the interval
        // spans both sides of the margin, so the sequential test waits and says for how long.
        let d = decide(&c, false, &labelled(500, 426), &labelled(500, 417), &none);
        let Decision::Wait(why) = d else {
            panic!("{d:?}")
        };
        assert!(why.contains("95 % anytime interval"), "{why}");
        assert!(why.contains("needs at most about"), "{why}");
        // Far better: promoted with the evidence.
        let d = decide(
            &c,
            false,
            &labelled(2_000, 1_600),
            &labelled(2_000, 1_800),
            &none,
        );
        assert!(
            matches!(&d, Decision::Promote(r) if r.contains("difference +0.1000")),
            "{d:?}"
        );
        // Far worse: rolled back with the evidence.
        let d = decide(
            &c,
            false,
            &labelled(2_000, 1_800),
            &labelled(2_000, 1_500),
            &none,
        );
        assert!(
            matches!(&d, Decision::Rollback(r) if r.contains("difference -0.1500")
                && r.contains("rolled back with probability at most alpha 0.05")),
            "{d:?}"
        );
    }
}
