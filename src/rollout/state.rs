//! The deployment state file: what must survive a restart (pinned stable versions and
//! candidates), written atomically so a crash leaves the old file or the new one, never half.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StateFile {
    pub models: BTreeMap<String, ModelState>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelState {
    #[serde(default)]
    pub stable: Option<u64>,
    #[serde(default)]
    pub candidate: Option<CandidateState>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CandidateState {
    pub version: u64,
    /// `canary` or `shadow`.
    pub mode: String,
    #[serde(default)]
    pub weight: f64,
    #[serde(default)]
    pub sticky_header: Option<String>,
    /// The criteria in force, overrides included; absent, the version's `config.toml` applies.
    #[serde(default)]
    pub criteria: Option<crate::config::RolloutConfig>,
}

impl StateFile {
    /// Reads the file; a missing file is an empty state.
    pub fn read(path: &Path) -> Result<StateFile, String> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: not a deployment state file: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StateFile::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Writes to a temporary file in the same directory, syncs it, renames it over the old one
    /// and syncs the directory.
    pub fn write(&self, path: &Path) -> Result<(), String> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(self).expect("state serializes");
        let mut file = std::fs::File::create(&tmp)
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        file.write_all(&body)
            .and_then(|()| file.sync_all())
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .map_err(|e| format!("cannot rename {} to {}: {e}", tmp.display(), path.display()))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/deployments.json");
        assert_eq!(StateFile::read(&path).unwrap(), StateFile::default());
        let mut state = StateFile::default();
        state.models.insert(
            "m".into(),
            ModelState {
                stable: Some(1),
                candidate: Some(CandidateState {
                    version: 2,
                    mode: "canary".into(),
                    weight: 0.25,
                    sticky_header: Some("x-user".into()),
                    criteria: Some(crate::config::RolloutConfig::default()),
                }),
            },
        );
        state.write(&path).unwrap();
        assert_eq!(StateFile::read(&path).unwrap(), state);
        assert!(!path.with_extension("json.tmp").exists());
        std::fs::write(&path, b"{oops").unwrap();
        assert!(StateFile::read(&path)
            .unwrap_err()
            .contains("not a deployment state file"));
    }
}
