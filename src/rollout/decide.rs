//! The promotion and rollback rule, as a pure function of a candidate's trial.

use crate::config::RolloutConfig;
use crate::routing::{ArmSnapshot, ShadowSnapshot};

/// What to do with a candidate now.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Wait,
    Promote(String),
    Rollback(String),
}

/// Stable-side samples needed before a latency ratio means anything.
const MIN_STABLE_SAMPLES: u64 = 20;

/// Decides from the trial so far. The candidate's errors roll it back as soon as they exceed the
/// whole window's budget; every other criterion waits for `min_requests`.
pub fn decide(
    c: &RolloutConfig,
    shadow_mode: bool,
    stable: &ArmSnapshot,
    candidate: &ArmSnapshot,
    shadow: &ShadowSnapshot,
) -> Decision {
    let budget = (c.max_error_rate * c.min_requests as f64).floor() as u64;
    if c.auto_rollback && candidate.errors > budget {
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
        return Decision::Wait;
    }
    let mut misses = Vec::new();
    let error_rate = candidate.errors as f64 / candidate.requests.max(1) as f64;
    if error_rate > c.max_error_rate {
        misses.push(format!(
            "error rate {error_rate:.4} > max_error_rate {}",
            c.max_error_rate
        ));
    }
    let mut latency = String::new();
    if let (Some(cp), Some(sp)) = (candidate.p99_us, stable.p99_us) {
        if stable.requests >= MIN_STABLE_SAMPLES && sp > 0.0 {
            let ratio = cp / sp;
            latency = format!(", p99 ratio {ratio:.2}");
            if ratio > c.max_p99_ratio {
                misses.push(format!(
                    "p99 latency {cp:.0} µs is {ratio:.2}× the stable {sp:.0} µs > max_p99_ratio {}",
                    c.max_p99_ratio
                ));
            }
        }
    }
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
    // Live quality: the candidate's accuracy on rows with feedback, against the stable
    // version's over the same trial.
    let mut quality_note = String::new();
    let mut waiting_for_labels = false;
    if let (false, Some(max_drop)) = (shadow_mode, c.max_accuracy_drop) {
        match (candidate.accuracy(), stable.accuracy()) {
            (Some(ca), Some(sa))
                if candidate.labelled >= c.min_labelled && stable.labelled >= c.min_labelled =>
            {
                quality_note = format!(", accuracy {ca:.4} against stable {sa:.4}");
                if ca < sa - max_drop {
                    misses.push(format!(
                        "accuracy {ca:.4} on {} labelled rows is more than max_accuracy_drop \
                         {max_drop} below the stable version's {sa:.4} on {}",
                        candidate.labelled, stable.labelled
                    ));
                }
            }
            _ => waiting_for_labels = true,
        }
    }
    if !misses.is_empty() {
        return if c.auto_rollback {
            Decision::Rollback(misses.join("; "))
        } else {
            Decision::Wait
        };
    }
    if waiting_for_labels {
        return Decision::Wait;
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
        Decision::Wait
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
            Decision::Wait
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
    fn manual_mode_only_waits() {
        let c = RolloutConfig {
            auto_promote: false,
            auto_rollback: false,
            ..criteria()
        };
        let none = ShadowSnapshot::default();
        assert_eq!(
            decide(&c, false, &arm(900, 0, 100.0), &arm(100, 50, 900.0), &none),
            Decision::Wait
        );
        assert_eq!(
            decide(&c, false, &arm(900, 0, 100.0), &arm(100, 0, 100.0), &none),
            Decision::Wait
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
        assert_eq!(decide(&c, false, &stable, &few, &none), Decision::Wait);
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
}
