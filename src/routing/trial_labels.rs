//! Labelled rows counted into a running trial: feedback matched on this replica (from its own
//! callers, or relayed from another replica's) becomes the trial's live-quality evidence.

use super::Router;
use crate::monitoring::Outcome;

/// Counts labelled rows into the running canary's trial, per arm, for its live-quality
/// criterion. A row belongs to the trial only if the deployment routed it to that arm (a request
/// naming its version is in no trial) after the trial started; a label that arrives late still
/// counts, a duplicate never reaches here.
pub fn record_trial_labels(router: &Router, model: &str, outcomes: &[Outcome]) {
    if outcomes.is_empty() {
        return;
    }
    let table = router.snapshot();
    let Some(route) = table.models.get(model) else {
        return;
    };
    let Some(candidate) = &route.deployment.candidate else {
        return;
    };
    let started_us = candidate
        .started
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let stable = route.stable().map(|s| s.version);
    let t = trial_labels(outcomes, candidate.version, stable, started_us);
    candidate
        .tracker
        .candidate
        .record_labels(t.candidate.0, t.candidate.1);
    candidate
        .tracker
        .stable
        .record_labels(t.stable.0, t.stable.1);
    candidate
        .tracker
        .shadow
        .record_pairs(t.pairs.0, t.pairs.1, t.pairs.2);
}

/// Labelled and correct rows of each arm of a trial.
#[derive(Debug, Default, PartialEq, Eq)]
struct TrialLabels {
    candidate: (u64, u64),
    stable: (u64, u64),
    /// Rows the stable arm answered and the candidate's shadow scored too: (pairs, right on the
    /// stable side only, right on the candidate's only).
    pairs: (u64, u64, u64),
}

fn trial_labels(
    outcomes: &[Outcome],
    candidate: u64,
    stable: Option<u64>,
    started_us: i64,
) -> TrialLabels {
    use cairn_monitor::log::Arm;
    let mut t = TrialLabels::default();
    for o in outcomes.iter().filter(|o| o.answered_us >= started_us) {
        if let (Arm::Stable, Some((version, shadow_right))) = (o.arm, o.shadow) {
            if version == candidate && Some(o.version) == stable {
                t.pairs.0 += 1;
                t.pairs.1 += u64::from(o.correct && !shadow_right);
                t.pairs.2 += u64::from(shadow_right && !o.correct);
            }
        }
        let arm = match o.arm {
            Arm::Canary if o.version == candidate => &mut t.candidate,
            Arm::Stable if Some(o.version) == stable && o.version != candidate => &mut t.stable,
            _ => continue,
        };
        arm.0 += 1;
        arm.1 += u64::from(o.correct);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_monitor::log::Arm;

    fn o(version: u64, arm: Arm, answered_us: i64, correct: bool) -> Outcome {
        Outcome {
            version,
            arm,
            answered_us,
            correct,
            shadow: None,
        }
    }

    /// v1 stable, v2 the canary, started at t = 100.
    #[test]
    fn only_rows_the_deployment_routed_during_the_trial_count() {
        let outcomes = [
            // Routed during the trial: counted on their arm.
            o(2, Arm::Canary, 150, true),
            o(2, Arm::Canary, 160, false),
            o(1, Arm::Stable, 150, true),
            // A label arriving late for a row answered during the trial: still the trial's.
            o(1, Arm::Stable, 101, false),
            // Requests that named their version: in no trial.
            o(1, Arm::Direct, 150, true),
            o(2, Arm::Direct, 150, true),
            // Answered by the stable version before the trial started.
            o(1, Arm::Stable, 99, true),
            // An older stable version that still answers named requests.
            o(0, Arm::Stable, 150, true),
        ];
        let t = trial_labels(&outcomes, 2, Some(1), 100);
        assert_eq!(t.candidate, (2, 1));
        assert_eq!(t.stable, (2, 1));
        // Duplicates never reach here (the index answers them `Duplicate`); the same outcome
        // sent twice would count twice, so the index is what keeps a row to one label.
        assert_eq!(trial_labels(&[], 2, Some(1), 100), TrialLabels::default());
    }

    /// v1 stable, v2 in shadow since t = 100: a stable row the shadow scored too is a pair,
    /// counted as discordant on the side that alone was right.
    #[test]
    fn shadowed_rows_of_the_trial_are_pairs() {
        let shadowed = |correct, shadow_right, answered_us, shadow_version| Outcome {
            shadow: Some((shadow_version, shadow_right)),
            ..o(1, Arm::Stable, answered_us, correct)
        };
        let outcomes = [
            shadowed(true, true, 150, 2),
            shadowed(true, false, 150, 2),
            shadowed(false, true, 150, 2),
            shadowed(false, true, 151, 2),
            shadowed(false, false, 150, 2),
            // Before the trial, or scored by another version's shadow: not this trial's.
            shadowed(false, true, 99, 2),
            shadowed(false, true, 150, 3),
        ];
        let t = trial_labels(&outcomes, 2, Some(1), 100);
        assert_eq!(t.pairs, (5, 1, 2));
        assert_eq!(t.stable, (6, 2), "the stable arm's own count is unchanged");
    }
}
