//! The model repository: `<root>/<model>/config.toml` and `<root>/<model>/<version>/<file>`.
//!
//! Startup, an explicit load, an unload and a rescan all go through one reconcile,
//! [`Repository::load_model`]: read the config, apply the version policy, load what is new or
//! changed off the async runtime (engine, checks, warm-up), then publish the model's new route
//! with one atomic store. A version that fails any step never serves, and whatever was serving
//! stays untouched. Operations run one at a time; the status they leave behind feeds the
//! repository index, metadata and metrics.

pub mod remote;
pub(crate) mod scan;
pub mod upload;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Instant;

use crate::config::{LoadLimits, ModelConfig};
use crate::metrics::Metrics;
use crate::model::{LoadError, LoadedVersion};
use crate::monitoring::MonitorHub;
use crate::routing::{ModelRoute, Router};

pub use scan::{DirSignature, Fingerprint, TRAINED_MARKER};

/// A version to publish, as a training job or `cairn train` hands it over. Its files are made
/// once its number is known (the run record they carry names it): a local repository numbers
/// it one above its highest version, an object store by a claim (see [`upload`]).
pub struct Publication {
    pub model: String,
    /// A number asked for; `None`: the next one.
    pub version: Option<u64>,
    pub files: FilesFor,
    /// Who publishes (a replica, `cairn train` on a host), for the store's claim record.
    pub publisher: String,
    /// The training run that made the version (empty for an upload).
    pub run: String,
    /// With replicas: the model's lease as the job took it. The publish confirms it before it
    /// commits and refuses itself if the lease was lost meanwhile.
    pub fence: Option<crate::lease::Fence>,
}

/// Makes a version's files for its number.
pub type FilesFor = Box<dyn FnOnce(u64) -> Result<VersionFiles, RepositoryError> + Send>;

/// A version's files (paths relative to the version directory) and, for a model that has none,
/// its `config.toml`.
pub struct VersionFiles {
    pub files: Vec<(String, Vec<u8>)>,
    pub config: Option<ModelConfig>,
}

/// Publishes a version into a repository directory no server holds (the `cairn train` command):
/// staged, checked by loading, then renamed into place, as [`Repository::publish`] does. A server
/// polling that directory picks the version up like any other. Blocking.
pub fn publish_offline(
    root: &std::path::Path,
    model: &str,
    version: Option<u64>,
    files: &[(String, Vec<u8>)],
    config: Option<ModelConfig>,
) -> Result<u64, RepositoryError> {
    scan::stage_version(root, model, version, files, config, &offline_limits())
}

/// How a version published outside a server is checked: loaded in this process, with the
/// server's default limit on warm-up samples.
pub fn offline_limits() -> LoadLimits {
    LoadLimits {
        max_sample_bytes: 64 << 20,
        check: None,
    }
}

/// The version numbers present in a model directory, ascending.
pub fn versions_in(model_dir: &std::path::Path) -> Vec<u64> {
    let mut v = scan::version_dirs(model_dir).unwrap_or_default();
    v.sort_unstable();
    v
}

/// A version's or model's state as the repository index reports it (Triton's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadState {
    Loading,
    Ready,
    Unavailable,
}

impl LoadState {
    pub fn as_str(self) -> &'static str {
        match self {
            LoadState::Loading => "LOADING",
            LoadState::Ready => "READY",
            LoadState::Unavailable => "UNAVAILABLE",
        }
    }
}

/// One row of the repository index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub name: String,
    /// `None` for a model with no version to report (bad config, no version directories).
    pub version: Option<u64>,
    pub state: LoadState,
    pub reason: String,
}

/// Replacement content for an explicit load (the repository API's `config` and `file:`
/// parameters), as in Triton.
#[derive(Default)]
pub struct LoadOverride {
    pub config: Option<ModelConfig>,
    /// `(relative path, content)`, e.g. `("1/model.onnx", bytes)`.
    pub files: Vec<(String, Vec<u8>)>,
}

/// Why a repository operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    #[error("no model '{0}' in the repository")]
    UnknownModel(String),
    #[error("invalid model name '{0}'")]
    BadName(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("failed to load '{model}': {reason}")]
    LoadFailed { model: String, reason: String },
    #[error("repository I/O error: {0}")]
    Io(String),
    #[error("the repository has {0} operations waiting already; retry later")]
    Busy(usize),
    #[error("{0}")]
    Conflict(String),
}

/// Repository operations from the API that may wait for the lock at once. Each may hold an
/// upload of up to `max_body_bytes`, so the line must be short.
pub const MAX_WAITING_OPERATIONS: usize = 8;

#[derive(Default)]
struct ModelStatus {
    /// Model-level problem (config error, unloaded, no versions).
    reason: Option<String>,
    loading: bool,
    versions: BTreeMap<u64, VersionStatus>,
    /// Directory of files given through an explicit load, kept while they serve.
    override_dir: Option<Arc<tempfile::TempDir>>,
    /// The model directory as it was at the last load or unload; a rescan acts on a change.
    signature: Option<DirSignature>,
}

struct VersionStatus {
    state: LoadState,
    reason: String,
    fingerprint: Option<Fingerprint>,
}

/// What [`Repository::reconcile`] plans for a model's selected versions.
struct Plan {
    /// Versions whose file and config are unchanged: their instance keeps serving.
    keep: BTreeMap<u64, Arc<LoadedVersion>>,
    /// Versions to load: new, or with a changed file or config.
    to_load: Vec<scan::FoundVersion>,
}

/// Versions loaded by a reconcile, with the fingerprint of the file each was loaded from.
type LoadedVersions = BTreeMap<u64, (Arc<LoadedVersion>, Option<Fingerprint>)>;

/// What the loads of a reconcile came to.
struct Loads {
    loaded: LoadedVersions,
    /// Versions that failed to load, with the reason.
    failed: BTreeMap<u64, String>,
}

pub struct Repository {
    root: PathBuf,
    router: Arc<Router>,
    metrics: Metrics,
    limits: LoadLimits,
    /// Where uploaded files are kept while they serve.
    uploads: PathBuf,
    /// Each loaded version is attached to its model's monitor (when its `[monitoring]` is on).
    monitors: Arc<MonitorHub>,
    status: Mutex<BTreeMap<String, ModelStatus>>,
    /// Serializes load and unload operations, as Triton does. Held by the operation's own task,
    /// never by a request handler, so a client that goes away changes nothing.
    ops: tokio::sync::Mutex<()>,
    /// API operations started and not yet finished (bounded by [`MAX_WAITING_OPERATIONS`]).
    waiting: std::sync::atomic::AtomicUsize,
    /// Models whose directory the poller saw change, with what it saw: a change is acted on only
    /// once the next poll sees the same, so a version still being copied is never loaded.
    settling: Mutex<BTreeMap<String, DirSignature>>,
    /// The object store `root` mirrors, when the repository lives in one: synced before every
    /// scan (startup, poll, rescan).
    remote: Option<Arc<remote::RemoteRepository>>,
}

impl Repository {
    pub fn new(
        root: PathBuf,
        router: Arc<Router>,
        metrics: Metrics,
        limits: LoadLimits,
        uploads: PathBuf,
        monitors: Arc<MonitorHub>,
    ) -> Repository {
        Repository {
            root,
            router,
            metrics,
            limits,
            uploads,
            monitors,
            status: Mutex::new(BTreeMap::new()),
            ops: tokio::sync::Mutex::new(()),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            settling: Mutex::new(BTreeMap::new()),
            remote: None,
        }
    }

    /// Serves the mirror of an object store (its `mirror()` must be this repository's root).
    pub fn with_remote(mut self, remote: Arc<remote::RemoteRepository>) -> Repository {
        self.remote = Some(remote);
        self
    }

    /// Brings the mirror up to the object store, if there is one. A failure is logged and
    /// counted; what the mirror holds keeps serving.
    async fn sync_remote(&self) {
        let Some(remote) = &self.remote else {
            return;
        };
        match remote.sync().await {
            Ok(report) => {
                self.metrics.record_repository_sync("ok");
                if report.changed() {
                    tracing::info!(
                        url = remote.url(),
                        versions_downloaded = report.downloaded_versions,
                        versions_removed = report.removed_versions,
                        files = report.downloaded_files,
                        "repository mirror updated"
                    );
                }
                if report.incomplete_versions > 0 {
                    tracing::debug!(
                        url = remote.url(),
                        incomplete = report.incomplete_versions,
                        "versions without their model file are not mirrored yet"
                    );
                }
            }
            Err(e) => {
                self.metrics.record_repository_sync("error");
                tracing::error!(error = %e, "cannot sync the repository from its object store; serving what the mirror holds");
            }
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Removes upload and staging directories left by an earlier run. Blocking: call it at
    /// start-up, off the runtime.
    pub fn clean_stale(&self) {
        scan::clean_stale(&self.uploads, &self.root);
    }

    /// Loads every model in the repository; one that fails is reported and the others load.
    pub async fn load_all(&self) -> Result<(), RepositoryError> {
        self.sync_remote().await;
        let names = scan::model_names(&self.root).map_err(|e| {
            RepositoryError::Io(format!("cannot read {}: {e}", self.root.display()))
        })?;
        for name in names {
            if let Err(e) = self.load_now(&name, LoadOverride::default()).await {
                tracing::error!(model = %name, error = %e, "model failed to load");
            }
        }
        Ok(())
    }

    /// Reads the model's directory and config again, applies the version policy and serves the
    /// result. Versions whose file and config are unchanged keep serving as they are. The
    /// operation runs on its own task: dropping the returned future (a client that went away)
    /// neither stops it nor releases the repository before it is done.
    pub async fn load_model(
        self: &Arc<Self>,
        name: &str,
        with: LoadOverride,
    ) -> Result<(), RepositoryError> {
        let name = name.to_string();
        detached(Arc::clone(self), move |repo| async move {
            repo.load_now(&name, with).await
        })
        .await
    }

    async fn load_now(&self, name: &str, with: LoadOverride) -> Result<(), RepositoryError> {
        scan::check_name(name).map_err(|_| RepositoryError::BadName(name.to_string()))?;
        let _op = self.ops.lock().await;
        self.load_locked(name, with).await
    }

    /// A load, for a caller that holds the repository lock.
    async fn load_locked(&self, name: &str, with: LoadOverride) -> Result<(), RepositoryError> {
        let override_dir = if with.files.is_empty() {
            None
        } else {
            if with.config.is_none() {
                return Err(RepositoryError::BadRequest(
                    "a load with 'file:' parameters needs the 'config' parameter too".into(),
                ));
            }
            let uploads = self.uploads.clone();
            let model = name.to_string();
            let files = with.files;
            let written =
                blocking(move || scan::write_override(&uploads, &model, &files)).await??;
            Some(Arc::new(written))
        };
        let dir = match &override_dir {
            Some(tmp) => tmp.path().join(name),
            None => self.root.join(name),
        };
        if let Some(c) = &with.config {
            c.validate(name).map_err(|(key, reason)| {
                RepositoryError::BadRequest(format!("config parameter: key '{key}': {reason}"))
            })?;
        }
        let survey = {
            let (dir, name, config) = (dir.clone(), name.to_string(), with.config);
            blocking(move || scan::survey(&dir, &name, config)).await?
        };
        let Some(survey) = survey else {
            return Err(RepositoryError::UnknownModel(name.to_string()));
        };
        let _loading = self.mark_loading(name);
        self.status().entry(name.to_string()).or_default().signature =
            Some(survey.signature.clone());
        self.reconcile(name, &dir, survey, override_dir).await
    }

    /// Publishes `files` (paths relative to the version directory) as a new version of `model`
    /// in the repository, for the server's own writers: they are written into a hidden staging
    /// directory the scanner ignores, checked by loading them with the model's configuration
    /// (`config` when the model has none yet, which is then written as its `config.toml`), and
    /// only then renamed into `<root>/<model>/<version>` and reconciled. Neither a rescan nor a
    /// crash ever sees half a version. `version` defaults to one above the highest present.
    /// With an object store, [`Repository::publish_run`]'s upload.
    pub async fn publish(
        self: &Arc<Self>,
        model: &str,
        version: Option<u64>,
        files: Vec<(String, Vec<u8>)>,
        config: Option<ModelConfig>,
    ) -> Result<u64, RepositoryError> {
        self.publish_run(Publication {
            model: model.to_string(),
            version,
            files: Box::new(move |_| Ok(VersionFiles { files, config })),
            publisher: crate::lease::default_replica_id(),
            run: String::new(),
            fence: None,
        })
        .await
    }

    /// Publishes a version, serialized with the repository's other operations. In a local
    /// repository: numbered, staged, checked by loading, the lease confirmed (if fenced),
    /// renamed into place and loaded. With an object store: uploaded to the store
    /// ([`upload::publish_to_store`]: claimed, checked, model file last, the lease confirmed
    /// before the commit), then mirrored and loaded here as every replica loads it. The version
    /// once it is published; a version published to the store that this replica then fails to
    /// load is still published (logged).
    pub async fn publish_run(
        self: &Arc<Self>,
        publication: Publication,
    ) -> Result<u64, RepositoryError> {
        let model = publication.model.clone();
        scan::check_name(&model).map_err(|_| RepositoryError::BadName(model.clone()))?;
        detached(Arc::clone(self), move |repo| async move {
            let _op = repo.ops.lock().await;
            let version = match repo.remote.clone() {
                Some(remote) => {
                    let v =
                        upload::publish_to_store(&remote, &repo.root, &repo.limits, publication)
                            .await?;
                    repo.sync_remote().await;
                    if let Err(e) = repo.load_locked(&model, LoadOverride::default()).await {
                        tracing::error!(model = %model, version = v, error = %e,
                            "published to the store, but this replica cannot load it");
                    }
                    return Ok(v);
                }
                None => repo.publish_local(publication).await?,
            };
            repo.load_locked(&model, LoadOverride::default()).await?;
            Ok(version)
        })
        .await
    }

    /// Stages, checks and places a version in the local repository; the caller holds the lock.
    async fn publish_local(&self, publication: Publication) -> Result<u64, RepositoryError> {
        let Publication {
            model,
            version,
            files,
            fence,
            ..
        } = publication;
        let version = match version {
            Some(v) => v,
            None => {
                let dir = self.root.join(&model);
                blocking(move || versions_in(&dir))
                    .await?
                    .last()
                    .map_or(1, |v| v + 1)
            }
        };
        let VersionFiles { files, config } = files(version)?;
        let (root, limits, name) = (self.root.clone(), self.limits.clone(), model.clone());
        let staged =
            blocking(move || scan::stage(&root, &name, Some(version), &files, config, &limits))
                .await??;
        if let Some(fence) = &fence {
            if let Err(e) = fence.confirm().await {
                blocking(move || drop(staged)).await?;
                return Err(RepositoryError::Conflict(format!("not published: {e}")));
            }
        }
        blocking(move || staged.place()).await?
    }

    /// Rescans the repository: loads new models, reloads those whose directory changed (new,
    /// removed or rewritten versions, edited `config.toml`), unloads those that left it. Models
    /// loaded from uploaded files are left alone. Returns the models acted on. Runs on its own
    /// task, as [`Repository::load_model`] does.
    pub async fn rescan(self: &Arc<Self>) -> Vec<String> {
        detached(Arc::clone(self), |repo| async move {
            Ok::<_, RepositoryError>(repo.rescan_now(false).await)
        })
        .await
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "rescan failed");
            Vec::new()
        })
    }

    /// `settle`: act on a changed model only once two consecutive scans saw it the same (the
    /// poller); an explicit rescan acts on the directory as it is.
    async fn rescan_now(&self, settle: bool) -> Vec<String> {
        self.sync_remote().await;
        let root = self.root.clone();
        let listing = blocking(move || scan::listing(&root)).await;
        let listing = match listing {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                tracing::error!(error = %e, root = %self.root.display(), "cannot rescan the repository");
                return Vec::new();
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot rescan the repository");
                return Vec::new();
            }
        };
        let names: Vec<String> = listing.iter().map(|(n, _)| n.clone()).collect();
        let mut acted = Vec::new();
        for (name, signature) in &listing {
            let changed = {
                let status = self.status();
                match status.get(name) {
                    Some(s) if s.override_dir.is_some() => false,
                    Some(s) => s.signature.as_ref() != Some(signature),
                    None => true,
                }
            };
            let changed = changed && (!settle || self.settled(name, signature));
            if changed {
                acted.push(name.clone());
                if let Err(e) = self.load_now(name, LoadOverride::default()).await {
                    tracing::error!(model = %name, error = %e, "rescan: model failed to load");
                }
            }
        }
        let gone: Vec<String> = {
            let status = self.status();
            status
                .iter()
                .filter(|(n, s)| {
                    !names.contains(n)
                        && s.override_dir.is_none()
                        && s.versions.values().any(|v| v.state == LoadState::Ready)
                })
                .map(|(n, _)| n.clone())
                .collect()
        };
        for name in gone {
            if self
                .unload_with_reason(&name, "removed from the repository")
                .await
                .is_ok()
            {
                acted.push(name);
            }
        }
        acted
    }

    /// Rescans every `period` until `stop` turns true.
    pub async fn poll(
        self: Arc<Self>,
        period: std::time::Duration,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let me = &self;
        crate::periodic::every(
            period,
            crate::periodic::First::AfterPeriod,
            stop,
            || async move {
                let acted = me.rescan_now(true).await;
                if !acted.is_empty() {
                    tracing::info!(models = ?acted, "repository rescan applied changes");
                }
            },
        )
        .await
    }

    /// Stops serving every version of a model. In-flight requests finish on the versions they
    /// hold; queued ones run before the versions are freed. Runs on its own task, as
    /// [`Repository::load_model`] does.
    pub async fn unload_model(self: &Arc<Self>, name: &str) -> Result<(), RepositoryError> {
        let name = name.to_string();
        detached(Arc::clone(self), move |repo| async move {
            repo.unload_with_reason(&name, "unloaded").await
        })
        .await
    }

    async fn unload_with_reason(&self, name: &str, reason: &str) -> Result<(), RepositoryError> {
        let _op = self.ops.lock().await;
        let known = self.status().contains_key(name);
        if !known {
            return Err(RepositoryError::UnknownModel(name.to_string()));
        }
        let previous = self.route_of(name);
        self.router.update(name, |route| {
            route.versions.clear();
            route.failed.clear();
            route.reason = Some(reason.to_string());
        });
        for v in previous.versions.keys() {
            self.metrics.record_unload(name, *v);
        }
        let mut status = self.status();
        let entry = status.entry(name.to_string()).or_default();
        entry.reason = Some(reason.to_string());
        entry.override_dir = None;
        for v in entry.versions.values_mut() {
            v.state = LoadState::Unavailable;
            v.reason = reason.to_string();
            v.fingerprint = None;
        }
        tracing::info!(model = %name, reason, "model unloaded");
        Ok(())
    }

    /// The repository index: every model on disk or known from a load, with its versions.
    pub async fn index(&self, ready_only: bool) -> Vec<IndexEntry> {
        let root = self.root.clone();
        let on_disk = blocking(move || scan::model_names(&root))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let status = self.status();
        let mut names: Vec<&str> = on_disk.iter().map(String::as_str).collect();
        names.extend(status.keys().map(String::as_str));
        names.sort_unstable();
        names.dedup();
        let mut rows = Vec::new();
        for name in names {
            let Some(model) = status.get(name) else {
                rows.push(IndexEntry {
                    name: name.to_string(),
                    version: None,
                    state: LoadState::Unavailable,
                    reason: "not loaded".into(),
                });
                continue;
            };
            if model.versions.is_empty() || model.loading {
                rows.push(IndexEntry {
                    name: name.to_string(),
                    version: None,
                    state: if model.loading {
                        LoadState::Loading
                    } else {
                        LoadState::Unavailable
                    },
                    reason: model.reason.clone().unwrap_or_default(),
                });
            }
            for (&v, s) in &model.versions {
                rows.push(IndexEntry {
                    name: name.to_string(),
                    version: Some(v),
                    state: s.state,
                    reason: s.reason.clone(),
                });
            }
        }
        if ready_only {
            rows.retain(|r| r.state == LoadState::Ready);
        }
        rows
    }

    /// Whether the poller saw `signature` for `name` last time too; records it otherwise.
    fn settled(&self, name: &str, signature: &DirSignature) -> bool {
        let mut settling = self.settling.lock();
        if settling.get(name) == Some(signature) {
            settling.remove(name);
            true
        } else {
            settling.insert(name.to_string(), signature.clone());
            false
        }
    }

    /// The model's route as serving now (empty if it has none).
    fn route_of(&self, name: &str) -> ModelRoute {
        self.router
            .snapshot()
            .models
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    /// Marks a model as loading until the returned guard is dropped, however the load ends.
    fn mark_loading<'a>(&'a self, name: &'a str) -> LoadingMark<'a> {
        self.set_loading(name, true);
        LoadingMark { repo: self, name }
    }

    fn status(&self) -> parking_lot::MutexGuard<'_, BTreeMap<String, ModelStatus>> {
        self.status.lock()
    }

    fn set_loading(&self, name: &str, loading: bool) {
        self.status().entry(name.to_string()).or_default().loading = loading;
    }

    /// Makes what serves of `name` match `survey`: checks the survey, plans which selected
    /// versions need a (re)load, loads those one at a time, publishes the new route in one store
    /// and records the outcome in the status. Whatever fails keeps its previous instance serving.
    async fn reconcile(
        &self,
        name: &str,
        dir: &Path,
        survey: scan::Survey,
        override_dir: Option<Arc<tempfile::TempDir>>,
    ) -> Result<(), RepositoryError> {
        let current = self.route_of(name);
        let (config, found) = self.accept_survey(name, dir, survey, &current)?;
        let selected: Vec<u64> = found.iter().map(|s| s.version).collect();
        let plan = self.plan(name, &current, &config, found);
        let Loads { loaded, failed } = self.load_versions(name, &config, plan.to_load).await?;
        self.serve(name, &current, &plan.keep, &loaded, &failed);
        self.record_status(name, &current, override_dir, &selected, loaded, &failed);
        if failed.is_empty() {
            Ok(())
        } else {
            Err(RepositoryError::LoadFailed {
                model: name.into(),
                reason: failed
                    .iter()
                    .map(|(v, r)| format!("version {v}: {r}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            })
        }
    }

    /// The model's config and selected versions from `survey`; a model-level problem (bad
    /// config, no version selected) is recorded with [`Repository::fail_model`] and returned.
    fn accept_survey(
        &self,
        name: &str,
        dir: &Path,
        survey: scan::Survey,
        current: &ModelRoute,
    ) -> Result<(Arc<ModelConfig>, Vec<scan::FoundVersion>), RepositoryError> {
        let config = match survey.config {
            Ok(c) => Arc::new(c),
            Err(reason) => {
                tracing::error!(model = %name, error = %reason, "model configuration rejected");
                self.fail_model(name, current, &reason);
                return Err(RepositoryError::LoadFailed {
                    model: name.into(),
                    reason,
                });
            }
        };
        let available = survey
            .available
            .map_err(|e| RepositoryError::Io(format!("cannot read {}: {e}", dir.display())))?;
        if survey.selected.is_empty() {
            let reason = if available.is_empty() {
                "no version directories (positive integers) found".to_string()
            } else {
                format!("the version policy selects none of the versions present ({available:?})")
            };
            self.fail_model(name, current, &reason);
            return Err(RepositoryError::LoadFailed {
                model: name.into(),
                reason,
            });
        }
        Ok((config, survey.selected))
    }

    /// Which selected versions need a (re)load: new, or changed file, or changed config. The
    /// others keep serving the instance they have.
    fn plan(
        &self,
        name: &str,
        current: &ModelRoute,
        config: &ModelConfig,
        selected: Vec<scan::FoundVersion>,
    ) -> Plan {
        let mut plan = Plan {
            keep: BTreeMap::new(),
            to_load: Vec::new(),
        };
        let status = self.status();
        let known = status.get(name);
        for found in selected {
            let v = found.version;
            let unchanged = current.versions.get(&v).filter(|loaded| {
                *loaded.config == *config
                    && loaded.path == found.path
                    && found.fingerprint.is_some()
                    && known
                        .and_then(|m| m.versions.get(&v))
                        .and_then(|s| s.fingerprint.as_ref())
                        == found.fingerprint.as_ref()
            });
            match unchanged {
                Some(loaded) => {
                    plan.keep.insert(v, Arc::clone(loaded));
                }
                None => plan.to_load.push(found),
            }
        }
        plan
    }

    /// Loads the planned versions off the runtime, one at a time: each load may take up to
    /// `model_load_memory_bytes` (and its checked load as much again in the child), so loading
    /// a model's changed versions at once would multiply that by their number.
    async fn load_versions(
        &self,
        name: &str,
        config: &Arc<ModelConfig>,
        to_load: Vec<scan::FoundVersion>,
    ) -> Result<Loads, RepositoryError> {
        let mut loaded = BTreeMap::new();
        let mut failed = BTreeMap::new();
        for scan::FoundVersion {
            version: v,
            path,
            fingerprint,
        } in to_load
        {
            let config = Arc::clone(config);
            let metrics = self.metrics.clone();
            let model = name.to_string();
            let limits = self.limits.clone();
            let monitors = Arc::clone(&self.monitors);
            let task = tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                let result = if path.is_file() {
                    LoadedVersion::load(
                        &model,
                        v,
                        &path,
                        Arc::clone(&config),
                        metrics.version(&model, v),
                        &limits,
                    )
                    .and_then(|mut version| {
                        let dir = path.parent().unwrap_or(&path);
                        version.trained = dir.join(scan::TRAINED_MARKER).is_file();
                        version.monitor = monitors
                            .attach(&model, v, &config, &version.io, dir)
                            .map_err(LoadError::Interface)?;
                        Ok(version)
                    })
                } else {
                    Err(LoadError::MissingFile(path.display().to_string()))
                };
                metrics.record_load(&model, v, started.elapsed(), result.is_ok());
                // Parsing and optimizing left scratch memory behind on this loader thread.
                crate::memory::release_freed_memory();
                (v, fingerprint, started.elapsed(), result)
            });
            let (v, fingerprint, took, result) = task.await.map_err(|e| {
                RepositoryError::Io(format!("a model load task stopped unexpectedly: {e}"))
            })?;
            match result {
                Ok(version) => {
                    tracing::info!(model = %name, version = v, took_ms = took.as_millis() as u64,
                        engine = version.engine.backend, "version loaded");
                    loaded.insert(v, (Arc::new(version), fingerprint));
                }
                Err(reason) => {
                    tracing::error!(model = %name, version = v, error = %reason, "version failed to load");
                    failed.insert(v, reason.to_string());
                }
            }
        }
        Ok(Loads { loaded, failed })
    }

    /// Publishes the model's new route: the kept and the loaded versions, and for a version
    /// that failed to reload its previous instance. A version no longer served drains.
    fn serve(
        &self,
        name: &str,
        current: &ModelRoute,
        keep: &BTreeMap<u64, Arc<LoadedVersion>>,
        loaded: &LoadedVersions,
        failed: &BTreeMap<u64, String>,
    ) {
        let mut versions = BTreeMap::new();
        let mut still_failed = BTreeMap::new();
        for (&v, version) in keep {
            versions.insert(v, Arc::clone(version));
        }
        for (&v, (version, _)) in loaded {
            versions.insert(v, Arc::clone(version));
        }
        for (&v, reason) in failed {
            match current.versions.get(&v) {
                Some(previous) => {
                    versions.insert(v, Arc::clone(previous));
                }
                None => {
                    still_failed.insert(v, reason.clone());
                }
            }
        }
        let dropped: Vec<u64> = current
            .versions
            .keys()
            .filter(|v| !versions.contains_key(v))
            .copied()
            .collect();
        // One store: the deployment rules (rollout's) see the new versions in the same update.
        self.router.update(name, |route| {
            route.failed = still_failed;
            route.reason = None;
            route.versions = versions;
        });
        for &v in &dropped {
            self.metrics.record_unload(name, v);
            tracing::info!(model = %name, version = v, "version no longer served; it drains and is dropped");
        }
    }

    /// Records the outcome of a reconcile in the model's status (the index and metadata read
    /// it), and keeps uploaded files only while a version loaded from them serves.
    fn record_status(
        &self,
        name: &str,
        current: &ModelRoute,
        override_dir: Option<Arc<tempfile::TempDir>>,
        selected: &[u64],
        loaded: LoadedVersions,
        failed: &BTreeMap<u64, String>,
    ) {
        let mut status = self.status();
        let entry = status.entry(name.to_string()).or_default();
        entry.reason = None;
        // Uploaded files are kept only while a version loaded from them serves; a failed
        // upload's directory goes now, not at shutdown.
        match override_dir {
            Some(dir) if !loaded.is_empty() => entry.override_dir = Some(dir),
            Some(_) => {}
            None if failed.is_empty() => entry.override_dir = None,
            None => {}
        }
        entry
            .versions
            .retain(|v, _| selected.contains(v) || failed.contains_key(v));
        for (v, (_, fingerprint)) in loaded {
            entry.versions.insert(
                v,
                VersionStatus {
                    state: LoadState::Ready,
                    reason: String::new(),
                    fingerprint,
                },
            );
        }
        for (&v, reason) in failed {
            let serving_old = current.versions.contains_key(&v);
            let s = entry.versions.entry(v).or_insert(VersionStatus {
                state: LoadState::Unavailable,
                reason: String::new(),
                fingerprint: None,
            });
            if serving_old {
                s.reason = format!("reload failed, previous instance still serving: {reason}");
            } else {
                s.state = LoadState::Unavailable;
                s.reason = reason.clone();
            }
        }
    }

    /// Records a model-level failure; whatever serves keeps serving.
    fn fail_model(&self, name: &str, current: &ModelRoute, reason: &str) {
        let serving = current.is_ready();
        if !serving {
            self.router
                .update(name, |route| route.reason = Some(reason.to_string()));
        }
        let mut status = self.status();
        let entry = status.entry(name.to_string()).or_default();
        entry.reason = Some(if serving {
            format!("reload failed, previous versions still serving: {reason}")
        } else {
            reason.to_string()
        });
    }
}

/// Clears a model's loading mark when its load ends, whether it returned, failed or panicked.
struct LoadingMark<'a> {
    repo: &'a Repository,
    name: &'a str,
}

impl Drop for LoadingMark<'_> {
    fn drop(&mut self) {
        self.repo.set_loading(self.name, false);
    }
}

/// Runs a repository operation on a task of its own and waits for it. The operation holds the
/// repository lock and finishes even if the waiter is dropped, so the outcome of a load never
/// depends on whether its client stayed connected. At most [`MAX_WAITING_OPERATIONS`] wait at
/// once; beyond, the caller is told at once that the repository is busy.
async fn detached<T, F, Fut>(repo: Arc<Repository>, op: F) -> Result<T, RepositoryError>
where
    T: Send + 'static,
    F: FnOnce(Arc<Repository>) -> Fut,
    Fut: std::future::Future<Output = Result<T, RepositoryError>> + Send + 'static,
{
    use std::sync::atomic::Ordering;
    let waiting = repo.waiting.fetch_add(1, Ordering::AcqRel);
    if waiting >= MAX_WAITING_OPERATIONS {
        repo.waiting.fetch_sub(1, Ordering::AcqRel);
        return Err(RepositoryError::Busy(waiting));
    }
    let counted = Arc::clone(&repo);
    let task = op(repo);
    tokio::spawn(async move {
        let result = task.await;
        counted.waiting.fetch_sub(1, Ordering::AcqRel);
        result
    })
    .await
    .map_err(|e| RepositoryError::Io(format!("the repository operation stopped: {e}")))?
}

/// Runs file-system work on the blocking pool, never on a runtime worker.
async fn blocking<T, F>(f: F) -> Result<T, RepositoryError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RepositoryError::Io(format!("repository file work stopped: {e}")))
}
