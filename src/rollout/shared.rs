//! The deployment state shared by replicas: `deployments.json` in an object store, written with
//! a conditional put (the ETag the writer last saw) and read back by every replica each poll.
//!
//! Each replica keeps what it last synced. At every look it compares the store with that: a
//! newer state in the store (another replica's change) is applied here, and a change made here
//! since the last sync is written over it model by model (a model changed here wins over the
//! store's copy of that model, unless the store's copy changed too: then the first written
//! wins). A conditional put that loses a race is retried at the next look against the newer
//! state, so two replicas changing different models both keep theirs.

use std::sync::Arc;

use object_store::path::Path as StorePath;
use object_store::{ObjectStore, UpdateVersion};

use super::state::StateFile;

/// The state object is a few kilobytes; anything this large is not ours.
const MAX_STATE_BYTES: u64 = 16 << 20;

pub struct SharedState {
    url: String,
    store: Arc<dyn ObjectStore>,
    path: StorePath,
}

/// What the store held when read: the state and the version a conditional put must name.
pub struct Remote {
    pub state: StateFile,
    pub version: UpdateVersion,
}

/// How a conditional put went.
pub enum Put {
    Written(UpdateVersion),
    /// Another replica wrote first.
    Lost,
}

impl SharedState {
    /// `url` names a prefix (`s3://bucket/state`); the state is its `deployments.json`.
    pub fn open(url: &str) -> Result<SharedState, String> {
        let (store, prefix) =
            crate::store::open(url, "60s").map_err(|e| format!("'{url}': {e}"))?;
        Ok(SharedState {
            url: format!("{}/deployments.json", url.trim_end_matches('/')),
            store,
            path: prefix.child("deployments.json"),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The state in the store; `None` when there is none yet.
    pub async fn read(&self) -> Result<Option<Remote>, String> {
        let Some((bytes, version)) =
            crate::store::read_versioned(self.store.as_ref(), &self.path, MAX_STATE_BYTES)
                .await
                .map_err(|e| format!("{}: {e}", self.url))?
        else {
            return Ok(None);
        };
        let state: StateFile = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{}: not a deployment state: {e}", self.url))?;
        Ok(Some(Remote { state, version }))
    }

    /// Writes `state` if the store still holds `expected` (`None`: if it holds nothing).
    pub async fn put(
        &self,
        state: &StateFile,
        expected: Option<UpdateVersion>,
    ) -> Result<Put, String> {
        let body = serde_json::to_vec_pretty(state).expect("the state serializes");
        match crate::store::write_if(self.store.as_ref(), &self.path, body, expected).await {
            Ok(Some(version)) => Ok(Put::Written(version)),
            Ok(None) => Ok(Put::Lost),
            Err(e) => Err(format!("{}: {e}", self.url)),
        }
    }
}

/// The state to hold after a look: the store's, with every model changed here since the last
/// sync (`synced` → `local`) and not in the store meanwhile taken from here. A model changed on
/// both sides keeps the store's: the change written first wins, so that a decision another
/// replica wrote (a promotion, a rollback) is never undone by a change this one made without
/// having seen it (a version entering as a candidate on its late load, say).
pub fn merge(remote: &StateFile, synced: &StateFile, local: &StateFile) -> StateFile {
    let mut merged = remote.clone();
    let models: std::collections::BTreeSet<&String> =
        synced.models.keys().chain(local.models.keys()).collect();
    for model in models {
        let here = local.models.get(model);
        let before = synced.models.get(model);
        if here != before && remote.models.get(model) == before {
            match here {
                Some(state) => {
                    merged.models.insert(model.clone(), state.clone());
                }
                None => {
                    merged.models.remove(model);
                }
            }
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::Deployment;

    fn state(models: &[(&str, u64)]) -> StateFile {
        StateFile {
            models: models
                .iter()
                .map(|(m, v)| {
                    (
                        m.to_string(),
                        Deployment {
                            stable: Some(*v),
                            candidate: None,
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn a_change_here_wins_for_its_model_only() {
        let synced = state(&[("a", 1), ("b", 1)]);
        let remote = state(&[("a", 1), ("b", 2)]); // another replica changed b
        let local = state(&[("a", 3), ("b", 1)]); // this one changed a
        assert_eq!(
            merge(&remote, &synced, &local),
            state(&[("a", 3), ("b", 2)])
        );
        // Nothing changed here: the store's state, whole.
        assert_eq!(merge(&remote, &synced, &synced), remote);
        // A model whose deployment was cleared here is cleared.
        let cleared = state(&[("b", 1)]);
        assert_eq!(merge(&remote, &synced, &cleared), state(&[("b", 2)]));
        // Changed here and in the store since the last sync: the store's change came first.
        let both = state(&[("a", 1), ("b", 5)]);
        assert_eq!(merge(&remote, &synced, &both), remote);
    }

    #[tokio::test]
    async fn a_conditional_put_loses_to_a_newer_write() {
        let shared = SharedState::open("memory:///state").unwrap();
        assert!(shared.read().await.unwrap().is_none());
        let Put::Written(first) = shared.put(&state(&[("a", 1)]), None).await.unwrap() else {
            panic!("the first write goes in");
        };
        assert!(matches!(
            shared.put(&state(&[("a", 9)]), None).await.unwrap(),
            Put::Lost
        ));
        let Put::Written(_) = shared
            .put(&state(&[("a", 2)]), Some(first.clone()))
            .await
            .unwrap()
        else {
            panic!("the writer that saw the last version wins");
        };
        assert!(matches!(
            shared.put(&state(&[("a", 3)]), Some(first)).await.unwrap(),
            Put::Lost
        ));
        assert_eq!(
            shared.read().await.unwrap().unwrap().state,
            state(&[("a", 2)])
        );
    }
}
