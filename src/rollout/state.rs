//! The deployment state file: what must survive a restart (pinned stable versions and
//! candidates), written atomically so a crash leaves the old file or the new one, never half.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Deployment;

/// Every model's deployment, as it serves (`Deployment` is saved as it is, nothing mapped).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    pub models: BTreeMap<String, Deployment>,
}

/// Why the state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: crate::bounded::BoundedReadError,
    },
    #[error("{}: not a deployment state file: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A state file is a few KiB per model; anything near this is not one.
const MAX_STATE_FILE_BYTES: u64 = 16 << 20;

impl StateFile {
    /// Reads the file; a missing file is an empty state.
    pub fn read(path: &Path) -> Result<StateFile, StateError> {
        match crate::bounded::read(path, MAX_STATE_FILE_BYTES) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }),
            Err(crate::bounded::BoundedReadError::Io(e))
                if e.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(StateFile::default())
            }
            Err(crate::bounded::BoundedReadError::TooLarge { limit }) => Err(StateError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("larger than {limit} bytes"),
            }),
            Err(source) => Err(StateError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Writes to a temporary file in the same directory, syncs it, renames it over the old one
    /// (`tempfile`'s persist) and syncs the directory: a crash leaves the old file or the new.
    pub fn write(&self, path: &Path) -> Result<(), StateError> {
        let fail = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StateError::Write { path, source }
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(fail(dir))?;
        let body = serde_json::to_vec_pretty(self).expect("state serializes");
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(fail(dir))?;
        tmp.write_all(&body)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(fail(tmp.path()))?;
        tmp.persist(path).map_err(|e| fail(path)(e.error))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// Moves an unreadable state file aside, next to where it was, so its content is kept for the
/// operator while the server starts without it. Returns where it went.
pub fn set_aside(path: &Path) -> std::io::Result<PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".unreadable-{stamp}"));
    let aside = path.with_file_name(name);
    std::fs::rename(path, &aside)?;
    if let Some(dir) = path.parent().and_then(|d| std::fs::File::open(d).ok()) {
        let _ = dir.sync_all();
    }
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::{Candidate, CandidateMode};

    #[test]
    fn round_trips_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/deployments.json");
        assert_eq!(StateFile::read(&path).unwrap(), StateFile::default());
        let mut state = StateFile::default();
        state.models.insert(
            "m".into(),
            Deployment {
                stable: Some(1),
                candidate: Some(Candidate::new(
                    2,
                    CandidateMode::Canary {
                        weight: 0.25,
                        sticky_header: Some("x-user".into()),
                    },
                    crate::config::RolloutConfig::default(),
                )),
            },
        );
        state.write(&path).unwrap();
        assert_eq!(StateFile::read(&path).unwrap(), state);
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
        std::fs::write(&path, b"{oops").unwrap();
        assert!(StateFile::read(&path)
            .unwrap_err()
            .to_string()
            .contains("not a deployment state file"));
        std::fs::write(
            &path,
            br#"{"models":{"m":{"stable":1,"candidate":{"version":2,"mode":"blue","criteria":{}}}}}"#,
        )
        .unwrap();
        let err = StateFile::read(&path).unwrap_err().to_string();
        assert!(err.contains("unknown variant `blue`"), "{err}");
        let aside = set_aside(&path).unwrap();
        assert!(!path.exists());
        assert!(std::fs::read(&aside).unwrap().starts_with(br#"{"models""#));
    }
}
