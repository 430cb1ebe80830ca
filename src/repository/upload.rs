//! Publishing a version into an object-store repository: what a server's training job does when
//! its repository is a store, and what `cairn train` does with `output.repository` a store
//! URL, through the same code, so that no poller ever sees half a version:
//!
//! 1. With a lease (a server job on replicas): the lease is confirmed, renewing it.
//! 2. The number is claimed with a conditional create of `<model>/<N>/.claim.json` (who, run,
//!    lease generation, when), N one above every version the store lists for the model,
//!    complete or not, and above the caller's floor: two publishers never share a number, and
//!    a claimed number is never reused, even if its publish fails. Pollers ignore the claim
//!    (a hidden name). The version's files are made for N (its run record names it) and
//!    checked by loading them here, staged in a local directory as any publish; one that does
//!    not load goes no further.
//! 3. A model without a `config.toml` gets one, with a conditional create (one written
//!    meanwhile by another publisher must say the same).
//! 4. The version's other files, then its model file as `<model>/<N>/.pending.<file>` (hidden).
//! 5. With a lease: confirmed again. Until the renewed lease's expiry no other replica can hold
//!    it, so the commit must end well before: its time is bounded by what is left of the lease.
//! 6. The commit: a copy, inside the store, of the pending model file into place. From that
//!    moment the version is complete (README: upload order) and every replica's poll loads it.
//!    A commit that did not answer in time is taken back (the model file deleted).
//! 7. The pending copy is removed.
//!
//! Every store call runs under a timeout of its own, whatever the store's client does.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::remote::{RemoteError, RemoteRepository};
use super::{blocking, scan, Publication, RepositoryError, VersionFiles};
use crate::config::LoadLimits;
use crate::lease::Fence;

/// The claim object's name inside a version's directory.
pub const CLAIM: &str = ".claim.json";
/// What the model file's name is prefixed with while it waits for its commit (a hidden name,
/// beside the others: a `file://` store leaves no empty directory behind).
const PENDING: &str = ".pending.";
/// Numbers tried past the first free one before a claim gives up: each miss is another
/// publisher's claim made meanwhile.
const CLAIM_TRIES: u64 = 16;
/// A small store call: a listing, a claim, a `config.toml`, a removal.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// One file's upload.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(300);
/// The commit, a copy inside the store, at most (less when the lease has less left).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(60);
/// What a lease must still have beyond the commit's own time: the holder's and the other
/// replicas' clocks may disagree by this much.
const LEASE_MARGIN: Duration = Duration::from_secs(10);
/// A commit gets at least this long, or is refused before it starts.
const MIN_COMMIT: Duration = Duration::from_secs(2);
/// A claim object or `config.toml` read back: small.
const MAX_SMALL_BYTES: u64 = 1 << 20;

/// What a claim records: who took the number, for which run, under which lease generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRecord {
    pub publisher: String,
    pub run: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_generation: Option<u64>,
    /// RFC 3339.
    pub claimed: String,
}

/// Publishes into the store behind `remote`: claims the number, makes the files for it, checks
/// them by loading under `root` (the mirror, or `cairn train`'s view of the model), then
/// uploads them as the module says. Returns the version. Nothing is placed under `root`: the
/// version reaches it, like every replica, through the store.
pub async fn publish_to_store(
    remote: &RemoteRepository,
    root: &Path,
    limits: &LoadLimits,
    publication: Publication,
) -> Result<u64, RepositoryError> {
    let Publication {
        model,
        version,
        files,
        publisher,
        run,
        fence,
    } = publication;
    // Versions this replica has that the store may not (published before the repository moved
    // to the store): a new number is above them too, so the new version is the highest here.
    let model_dir = root.join(&model);
    let floor = blocking(move || super::versions_in(&model_dir))
        .await?
        .last()
        .map_or(1, |v| v + 1);
    if let Some(fence) = &fence {
        fence
            .confirm()
            .await
            .map_err(|e| refused(remote, format!("before claiming a number: {e}")))?;
    }
    let claim = ClaimRecord {
        publisher,
        run,
        lease_generation: fence.as_ref().map(Fence::generation),
        claimed: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
    };
    let version = remote.claim(&model, floor, version, &claim).await?;
    let VersionFiles { files, config } = files(version)?;
    let (root, name, limits) = (root.to_path_buf(), model.clone(), limits.clone());
    let (staged, files) = blocking(move || {
        let staged = scan::stage(&root, &name, Some(version), &files, config, &limits);
        // The staged copy is not kept: the upload sends the bytes in memory.
        let staged = staged.map(|s| (s.model_file.clone(), s.config_text.clone()));
        (staged, files)
    })
    .await?;
    let (model_file, config_text) = staged?;
    remote
        .upload(
            &model,
            version,
            files,
            &model_file,
            config_text.as_deref(),
            fence.as_ref(),
        )
        .await?;
    tracing::info!(url = remote.url(), model = %model, version, run = %claim.run,
        "published a version to the store");
    Ok(version)
}

impl RemoteRepository {
    /// Claims a version number of `model`: `exact` if given (refused if taken), else the first
    /// one free at or above `floor` and above every version the store lists for the model.
    pub async fn claim(
        &self,
        model: &str,
        floor: u64,
        exact: Option<u64>,
        record: &ClaimRecord,
    ) -> Result<u64, RemoteError> {
        let body = serde_json::to_vec_pretty(record).expect("a claim serializes");
        if let Some(v) = exact {
            return match self
                .create_object(&format!("{model}/{v}/{CLAIM}"), &body, CALL_TIMEOUT)
                .await?
            {
                true => Ok(v),
                false => Err(self.conflict(format!(
                    "version {v} of '{model}' is taken by another publisher"
                ))),
            };
        }
        let listed = tokio::time::timeout(CALL_TIMEOUT, self.list_under(Some(model)))
            .await
            .map_err(|_| {
                self.store_error(format!("no answer to a listing of {model}/ in time"))
            })??;
        let highest = listed
            .keys()
            .filter_map(|rel| rel.split('/').nth(1).and_then(scan::parse_version))
            .max()
            .unwrap_or(0);
        let first = (highest + 1).max(floor);
        for v in first..first + CLAIM_TRIES {
            if self
                .create_object(&format!("{model}/{v}/{CLAIM}"), &body, CALL_TIMEOUT)
                .await?
            {
                return Ok(v);
            }
        }
        Err(self.conflict(format!(
            "versions {first} to {} of '{model}' were all claimed by other publishers meanwhile",
            first + CLAIM_TRIES - 1
        )))
    }

    /// Uploads a claimed version: the model's new `config.toml` (if any), the other files, the
    /// model file pending, the lease confirmed again, the commit.
    pub async fn upload(
        &self,
        model: &str,
        version: u64,
        files: Vec<(String, Vec<u8>)>,
        model_file: &str,
        config_text: Option<&str>,
        fence: Option<&Fence>,
    ) -> Result<(), RemoteError> {
        if let Some(text) = config_text {
            self.create_config(model, text).await?;
        }
        let dir = format!("{model}/{version}");
        let mut model_bytes = None;
        for (name, content) in files {
            if name == model_file {
                model_bytes = Some(content);
                continue;
            }
            self.put_object(&format!("{dir}/{name}"), content, UPLOAD_TIMEOUT)
                .await?;
        }
        let Some(model_bytes) = model_bytes else {
            return Err(self.conflict(format!(
                "version {version} of '{model}' has no '{model_file}' to publish"
            )));
        };
        let pending = format!("{dir}/{PENDING}{model_file}");
        self.put_object(&pending, model_bytes, UPLOAD_TIMEOUT)
            .await?;
        let committed = self
            .commit(&pending, &format!("{dir}/{model_file}"), fence)
            .await;
        if let Err(e) = self.delete_object(&pending, CALL_TIMEOUT).await {
            tracing::warn!(error = %e, "the pending copy of a published model file stays behind");
        }
        committed
    }

    /// Copies the pending model file into place within what the lease leaves; a copy that did
    /// not answer in time may still land, so it is deleted.
    async fn commit(
        &self,
        pending: &str,
        rel: &str,
        fence: Option<&Fence>,
    ) -> Result<(), RemoteError> {
        let limit = match fence {
            None => COMMIT_TIMEOUT,
            Some(fence) => {
                let expires = fence
                    .confirm()
                    .await
                    .map_err(|e| self.refused(format!("before the commit: {e}")))?;
                let left = Duration::from_millis(expires.saturating_sub(crate::lease::now_ms()))
                    .saturating_sub(LEASE_MARGIN);
                if left < MIN_COMMIT {
                    return Err(self.refused(format!(
                        "the lease, just renewed, leaves {} ms for the commit",
                        left.as_millis()
                    )));
                }
                left.min(COMMIT_TIMEOUT)
            }
        };
        if self.copy_object(pending, rel, limit).await? {
            return Ok(());
        }
        let taken_back = match self.delete_object(rel, CALL_TIMEOUT).await {
            Ok(()) => "taken back".to_string(),
            Err(e) => format!("it may have landed and could not be taken back: {e}"),
        };
        Err(self.store_error(format!(
            "the commit of {rel} did not answer within {} ms; {taken_back}",
            limit.as_millis()
        )))
    }

    /// A model's first `config.toml`: created only if absent; one another publisher wrote
    /// meanwhile is accepted only if it says the same.
    async fn create_config(&self, model: &str, text: &str) -> Result<(), RemoteError> {
        let rel = format!("{model}/config.toml");
        if self
            .create_object(&rel, text.as_bytes(), CALL_TIMEOUT)
            .await?
        {
            return Ok(());
        }
        match self
            .read_object(&rel, MAX_SMALL_BYTES, CALL_TIMEOUT)
            .await?
        {
            Some(bytes) if bytes.as_ref() == text.as_bytes() => Ok(()),
            _ => Err(self.conflict(format!(
                "another publisher wrote a different {rel} meanwhile; publish again to use it"
            ))),
        }
    }

    fn conflict(&self, reason: String) -> RemoteError {
        RemoteError::Conflict {
            url: self.url().to_string(),
            reason,
        }
    }

    fn refused(&self, reason: String) -> RemoteError {
        refused(self, reason)
    }
}

fn refused(remote: &RemoteRepository, reason: String) -> RemoteError {
    RemoteError::Refused {
        url: remote.url().to_string(),
        reason,
    }
}

impl From<RemoteError> for RepositoryError {
    fn from(e: RemoteError) -> RepositoryError {
        match e {
            RemoteError::Conflict { .. } | RemoteError::Refused { .. } => {
                RepositoryError::Conflict(e.to_string())
            }
            RemoteError::Url { .. } | RemoteError::Store { .. } | RemoteError::Local { .. } => {
                RepositoryError::Io(e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use super::*;
    use crate::lease::{Held, Leases};

    const LIMIT: Duration = Duration::from_secs(10);

    fn shipped(rel: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
    }

    fn record(who: &str) -> ClaimRecord {
        ClaimRecord {
            publisher: who.into(),
            run: "r".into(),
            lease_generation: None,
            claimed: "2026-12-07T00:00:00Z".into(),
        }
    }

    /// An empty in-memory store, and a repository over it with a fresh mirror.
    fn memory() -> (RemoteRepository, tempfile::TempDir) {
        let mirror = tempfile::tempdir().unwrap();
        let remote = RemoteRepository::open("memory:///repo", mirror.path().to_path_buf()).unwrap();
        (remote, mirror)
    }

    /// Another repository (another replica, another publisher) over the same store.
    fn beside(remote: &RemoteRepository) -> (RemoteRepository, tempfile::TempDir) {
        let mirror = tempfile::tempdir().unwrap();
        (remote.beside(mirror.path().to_path_buf()), mirror)
    }

    /// The store holding iris's config and version 1, and a repository over it whose mirror
    /// (the check's root) holds them too.
    async fn iris_store() -> (RemoteRepository, tempfile::TempDir) {
        let (remote, mirror) = memory();
        for rel in ["iris/config.toml", "iris/1/model.onnx"] {
            let body = std::fs::read(shipped(&format!("models/{rel}"))).unwrap();
            remote.put_object(rel, body, LIMIT).await.unwrap();
        }
        remote.sync().await.unwrap();
        (remote, mirror)
    }

    fn publication(fence: Option<Fence>) -> Publication {
        let model = std::fs::read(shipped("models/iris/2/model.onnx")).unwrap();
        Publication {
            model: "iris".into(),
            version: None,
            files: Box::new(move |v| {
                Ok(VersionFiles {
                    files: vec![
                        ("model.onnx".into(), model),
                        (
                            "run.json".into(),
                            format!("{{\"version\": {v}}}").into_bytes(),
                        ),
                    ],
                    config: None,
                })
            }),
            publisher: "test".into(),
            run: "run-1".into(),
            fence,
        }
    }

    async fn keys(remote: &RemoteRepository, under: &str) -> Vec<String> {
        remote
            .list_under(Some(under))
            .await
            .unwrap()
            .into_keys()
            .collect()
    }

    async fn claim_of(remote: &RemoteRepository, version: u64) -> ClaimRecord {
        let rel = format!("iris/{version}/{CLAIM}");
        let bytes = remote.read_object(&rel, 1 << 20, LIMIT).await.unwrap();
        serde_json::from_slice(&bytes.unwrap()).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_publishers_never_share_a_number() {
        let (first, _mirror) = memory();
        // An upload in progress (no model file yet) holds its number too.
        first
            .put_object("m/7/sample.json", b"{}".to_vec(), LIMIT)
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for i in 0..16 {
            let (r, mirror) = beside(&first);
            tasks.push(tokio::spawn(async move {
                let got = r.claim("m", 1, None, &record(&format!("p{i}"))).await;
                drop(mirror);
                got
            }));
        }
        let mut got = Vec::new();
        for t in tasks {
            got.push(t.await.unwrap().unwrap());
        }
        got.sort_unstable();
        assert_eq!(
            got,
            (8..24).collect::<Vec<u64>>(),
            "one number each, above 7"
        );
        // A number asked for that is taken is refused, naming it.
        let e = first
            .claim("m", 1, Some(9), &record("late"))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("version 9 of 'm' is taken"), "{e}");
        // The floor (versions only this replica has) lifts the next number.
        assert_eq!(first.claim("m", 40, None, &record("x")).await.unwrap(), 40);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_version_is_complete_in_the_store_only_once_its_model_file_is_committed() {
        let (remote, mirror) = iris_store().await;
        let limits = crate::repository::offline_limits();
        let v = publish_to_store(&remote, mirror.path(), &limits, publication(None))
            .await
            .unwrap();
        assert_eq!(v, 2);
        assert_eq!(
            keys(&remote, "iris/2").await,
            ["iris/2/.claim.json", "iris/2/model.onnx", "iris/2/run.json"],
            "the pending copy is gone"
        );
        let claim = claim_of(&remote, 2).await;
        assert_eq!(
            (claim.publisher.as_str(), claim.run.as_str()),
            ("test", "run-1")
        );
        assert!(
            !mirror.path().join("iris/2").exists(),
            "nothing placed here: it comes through the store"
        );
        let report = remote.sync().await.unwrap();
        assert_eq!(report.downloaded_versions, 1);
        let run = std::fs::read_to_string(mirror.path().join("iris/2/run.json")).unwrap();
        assert_eq!(run, "{\"version\": 2}", "the files name the claimed number");
        assert!(!mirror.path().join("iris/2").join(CLAIM).exists());

        // A version that does not load is never uploaded (its number stays claimed).
        let mut bad = publication(None);
        bad.files = Box::new(|_| {
            Ok(VersionFiles {
                files: vec![("model.onnx".into(), vec![7u8; 64])],
                config: None,
            })
        });
        let e = publish_to_store(&remote, mirror.path(), &limits, bad)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("failed to load 'iris'"), "{e}");
        assert_eq!(keys(&remote, "iris/3").await, ["iris/3/.claim.json"]);
        assert_eq!(
            publish_to_store(&remote, mirror.path(), &limits, publication(None))
                .await
                .unwrap(),
            4
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_holder_that_lost_its_lease_publishes_nothing() {
        let (remote, mirror) = iris_store().await;
        let limits = crate::repository::offline_limits();
        let (state, prefix) = crate::store::open("memory:///state", "60s").unwrap();
        let lease = |holder: &str| {
            Arc::new(Leases::with_store(
                Arc::clone(&state),
                prefix.clone(),
                "memory:///state",
                holder,
                crate::lease::TTL,
            ))
        };
        let (a, b) = (lease("a"), lease("b"));
        let now = crate::lease::now_ms();
        let Held::Here(held) = a.acquire("iris", now).await.unwrap() else {
            panic!("a free lease is taken")
        };
        let fence = Fence::new(Arc::clone(&a), "iris", held.generation);
        // Held all along: published, the claim naming the holder's generation.
        let v = publish_to_store(
            &remote,
            mirror.path(),
            &limits,
            publication(Some(fence.clone())),
        )
        .await
        .unwrap();
        let claim = claim_of(&remote, v).await;
        assert_eq!(claim.lease_generation, Some(1));

        // A number claimed, then the lease taken over before the commit: the commit is
        // refused, and nothing of the version counts in the store.
        let next = remote.claim("iris", 1, None, &claim).await.unwrap();
        let far = now + 10 * crate::lease::TTL.as_millis() as u64;
        assert!(matches!(
            b.acquire("iris", far).await.unwrap(),
            Held::Here(_)
        ));
        let model = std::fs::read(shipped("models/iris/2/model.onnx")).unwrap();
        let e = remote
            .upload(
                "iris",
                next,
                vec![
                    ("baseline.json".into(), b"{}".to_vec()),
                    ("model.onnx".into(), model),
                ],
                "model.onnx",
                None,
                Some(&fence),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(e, RemoteError::Refused { .. }) && e.to_string().contains("held by 'b'"),
            "{e}"
        );
        assert_eq!(
            keys(&remote, &format!("iris/{next}")).await,
            [
                format!("iris/{next}/.claim.json"),
                format!("iris/{next}/baseline.json")
            ],
            "no model file, no pending copy"
        );
        remote.sync().await.unwrap();
        assert!(!mirror.path().join(format!("iris/{next}")).exists());

        // Held elsewhere: refused before a number is claimed.
        let e = publish_to_store(
            &remote,
            mirror.path(),
            &limits,
            publication(Some(fence.clone())),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("before claiming a number"), "{e}");
        assert!(keys(&remote, &format!("iris/{}", next + 1))
            .await
            .is_empty());
        // Taken back by the same replica, in a later generation: still refused.
        assert!(matches!(
            a.acquire("iris", far + 2 * crate::lease::TTL.as_millis() as u64)
                .await
                .unwrap(),
            Held::Here(r) if r.generation == 3
        ));
        let e = publish_to_store(&remote, mirror.path(), &limits, publication(Some(fence)))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("generation 1, now 3"), "{e}");
    }

    #[tokio::test]
    async fn a_new_models_config_is_created_once_and_must_agree() {
        let (remote, _mirror) = memory();
        remote
            .create_config("m", "max_batch_size = 4\n")
            .await
            .unwrap();
        // The same text from a second publisher is fine; another text is a conflict.
        remote
            .create_config("m", "max_batch_size = 4\n")
            .await
            .unwrap();
        let e = remote
            .create_config("m", "max_batch_size = 8\n")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("different m/config.toml"), "{e}");
    }
}
