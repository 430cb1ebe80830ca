//! A model's deployment: the type the request path reads (through the routing table), the
//! control API changes, the state file and the shared state persist, as one type. What is
//! saved is what serves; the trial's counters and its start are the only parts that are not
//! saved (a restart begins a new trial).

use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::config::RolloutConfig;
use crate::routing::Tracker;

/// Where requests that name no version go: plain data, read on the request path and changed
/// only by `rollout` (directly, or through its rules inside a routing update).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    /// The pinned stable version; `None` follows the highest ready version.
    #[serde(default)]
    pub stable: Option<u64>,
    #[serde(default)]
    pub candidate: Option<Candidate>,
}

impl Deployment {
    /// Nothing pinned and no candidate: the default, which is not saved.
    pub fn is_default(&self) -> bool {
        self.stable.is_none() && self.candidate.is_none()
    }
}

/// A version on trial beside the stable one. Saved as
/// `{"version", "mode", "weight", "sticky_header", "criteria"}`; a file without the criteria
/// (which every save writes) is not one this server wrote, and is refused with the rest of
/// the file rather than guessed at.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Candidate {
    pub version: u64,
    #[serde(flatten)]
    pub mode: CandidateMode,
    pub criteria: RolloutConfig,
    /// The trial's counters, shared with the request path. A restored candidate starts anew.
    #[serde(skip)]
    pub tracker: Arc<Tracker>,
    /// When the trial began: saved, so that replicas sharing the deployment know one trial by
    /// its version and start (`trials`); a file without it (earlier builds) starts it now.
    #[serde(rename = "started_ms", with = "epoch_ms", default = "SystemTime::now")]
    pub started: SystemTime,
}

impl Candidate {
    /// The trial's start in milliseconds since the Unix epoch.
    pub fn started_ms(&self) -> u64 {
        self.started
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

mod epoch_ms {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        )
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let ms = u64::deserialize(d)?;
        UNIX_EPOCH
            .checked_add(Duration::from_millis(ms))
            .ok_or_else(|| serde::de::Error::custom("started_ms is out of range"))
    }
}

impl Candidate {
    pub fn new(version: u64, mode: CandidateMode, criteria: RolloutConfig) -> Candidate {
        Candidate {
            version,
            mode,
            criteria,
            tracker: Arc::new(Tracker::default()),
            started: SystemTime::now(),
        }
    }
}

/// Two candidates are the same deployment when what is saved of them is: the trial in
/// progress is not part of it.
impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version && self.mode == other.mode && self.criteria == other.criteria
    }
}

/// How a candidate runs. An unknown mode makes a saved state unreadable: guessing would put
/// traffic where nobody asked for it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum CandidateMode {
    /// The candidate answers `weight` of the requests; with `sticky_header`, a caller's header
    /// value always lands on the same side (while the weight stays).
    Canary {
        #[serde(default)]
        weight: f64,
        #[serde(default)]
        sticky_header: Option<String>,
    },
    /// The candidate gets a copy of every request; only the stable version answers.
    Shadow,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_what_serves_and_reads_earlier_files() {
        let d = Deployment {
            stable: Some(1),
            candidate: Some(Candidate::new(
                2,
                CandidateMode::Canary {
                    weight: 0.25,
                    sticky_header: Some("x-user".into()),
                },
                RolloutConfig::default(),
            )),
        };
        let text = serde_json::to_value(&d).unwrap();
        assert_eq!(text["candidate"]["mode"], "canary");
        assert_eq!(text["candidate"]["weight"], 0.25);
        assert_eq!(text["candidate"]["sticky_header"], "x-user");
        let back: Deployment = serde_json::from_value(text).unwrap();
        assert_eq!(back, d);
        // A new trial: the counters are not saved.
        assert!(!Arc::ptr_eq(
            &back.candidate.as_ref().unwrap().tracker,
            &d.candidate.as_ref().unwrap().tracker
        ));

        // What earlier builds wrote for a shadow candidate (a weight and a null header).
        let criteria = serde_json::to_value(RolloutConfig::default()).unwrap();
        let shadow: Deployment = serde_json::from_value(serde_json::json!({
            "stable": null,
            "candidate": {"version": 3, "mode": "shadow", "weight": 0.0,
                          "sticky_header": null, "criteria": criteria},
        }))
        .unwrap();
        assert_eq!(shadow.candidate.unwrap().mode, CandidateMode::Shadow);

        for bad in [
            serde_json::json!({"candidate": {"version": 3, "mode": "blue", "criteria": criteria}}),
            serde_json::json!({"candidate": {"version": 3, "mode": "canary"}}),
            serde_json::json!({"stable": 1, "extra": true}),
        ] {
            assert!(
                serde_json::from_value::<Deployment>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }
}
