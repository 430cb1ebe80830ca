//! A model repository in an object store (`s3://bucket/prefix`, `gs://`, `az://`, `file://`,
//! ...), mirrored into a local directory that the repository then serves like any other.
//!
//! Each sync lists the prefix (one listing, ETags included), and downloads what is new or
//! whose ETag changed: a model's own files (`config.toml`, ...) by rename over the old copy,
//! a version as a whole directory, staged and renamed into place, so the poller and the loader
//! never see half a version. A version counts only once it is complete: its model file
//! (`default_model_filename` of the model's `config.toml`, `model.onnx` by default) is listed.
//! Uploaders therefore write a version's other files first and its model file last. A version
//! that disappears from the store is removed from the mirror; versions the mirror did not get
//! from the store (put there by hand) are left alone. This server's own publishes go to the
//! store (`upload`) and come back through here, like every other replica's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use object_store::path::Path as StorePath;
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

/// Most objects under the prefix; a listing beyond it is refused (a wrong prefix, such as a
/// whole bucket, would otherwise be mirrored).
const MAX_OBJECTS: usize = 100_000;
/// The largest single object mirrored (a model file of tens of GiB is a mistake of prefix).
const MAX_OBJECT_BYTES: u64 = 32 << 30;
/// A `config.toml` is read for its model file name; it is small.
const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// How long the first listing may take before the start is refused.
pub const FIRST_LIST_TIMEOUT: Duration = Duration::from_secs(60);
/// What the mirror records of the objects it holds, beside them.
const MANIFEST: &str = ".cairn-mirror.json";

/// Why the store cannot be mirrored.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("'{url}' is not an object-store URL: {reason}")]
    Url { url: String, reason: String },
    #[error("{url}: {reason}")]
    Store { url: String, reason: String },
    #[error("the repository mirror {}: {reason}", path.display())]
    Local { path: PathBuf, reason: String },
    /// A publish that met another publisher's work (a version number, a `config.toml`).
    #[error("{url}: {reason}")]
    Conflict { url: String, reason: String },
    /// A publish refused because its replica no longer holds the model's lease.
    #[error("not published to {url}: {reason}")]
    Refused { url: String, reason: String },
}

/// The store, the prefix in it, and the local mirror.
pub struct RemoteRepository {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    mirror: PathBuf,
    /// One sync at a time.
    syncing: tokio::sync::Mutex<()>,
}

/// One object as listed: its path below the prefix and its ETag (or, without one, its size
/// and modification time).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Listed {
    tag: String,
    size: u64,
}

/// What the mirror holds from the store, by model.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Manifest {
    models: BTreeMap<String, ModelFiles>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ModelFiles {
    /// The model's own files (`config.toml`, ...), by name.
    files: BTreeMap<String, Listed>,
    /// Complete versions, each with its files by path below the version directory.
    versions: BTreeMap<u64, BTreeMap<String, Listed>>,
}

/// What one sync changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub downloaded_versions: usize,
    pub removed_versions: usize,
    pub downloaded_files: usize,
    /// Versions listed without their model file yet (being uploaded).
    pub incomplete_versions: usize,
}

impl SyncReport {
    pub fn changed(&self) -> bool {
        self.downloaded_versions + self.removed_versions + self.downloaded_files > 0
    }
}

impl RemoteRepository {
    /// Builds the client from the URL and the environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`, as
    /// each store's own tools read them); nothing is contacted yet.
    pub fn open(url: &str, mirror: PathBuf) -> Result<RemoteRepository, RemoteError> {
        let (store, prefix) =
            crate::store::open(url, "300s").map_err(|reason| RemoteError::Url {
                url: url.into(),
                reason,
            })?;
        Ok(RemoteRepository {
            url: url.trim_end_matches('/').to_string(),
            store,
            prefix,
            mirror,
            syncing: tokio::sync::Mutex::new(()),
        })
    }

    /// Over a given store (tests: an in-memory one).
    pub fn with_store(
        store: Arc<dyn ObjectStore>,
        prefix: StorePath,
        url: &str,
        mirror: PathBuf,
    ) -> RemoteRepository {
        RemoteRepository {
            url: url.trim_end_matches('/').to_string(),
            store,
            prefix,
            mirror,
            syncing: tokio::sync::Mutex::new(()),
        }
    }

    /// Another repository over the same store, mirrored elsewhere (tests: another replica).
    #[cfg(test)]
    pub(super) fn beside(&self, mirror: PathBuf) -> RemoteRepository {
        Self::with_store(
            Arc::clone(&self.store),
            self.prefix.clone(),
            &self.url,
            mirror,
        )
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The local directory the repository serves.
    pub fn mirror(&self) -> &Path {
        &self.mirror
    }

    /// One listing, to fail the start at once when the store cannot be read (no credentials,
    /// no bucket, no network), with the reason and what to set.
    pub async fn check(&self) -> Result<(), RemoteError> {
        // A local store lists a missing directory as empty; like a missing bucket, it is a
        // mistake of the URL, not an empty repository.
        if let Some(dir) = url::Url::parse(&self.url)
            .ok()
            .filter(|u| u.scheme() == "file")
            .and_then(|u| u.to_file_path().ok())
        {
            if !tokio::fs::metadata(&dir).await.is_ok_and(|m| m.is_dir()) {
                return Err(self.store_error(format!("{} is not a directory", dir.display())));
            }
        }
        let first = async {
            let mut listing = self.store.list(Some(&self.prefix));
            match listing.next().await {
                Some(Err(e)) => Err(e),
                _ => Ok(()),
            }
        };
        match tokio::time::timeout(FIRST_LIST_TIMEOUT, first).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.store_error(format!("cannot list: {e}"))),
            Err(_) => Err(self.store_error(format!(
                "no answer to a listing within {} s",
                FIRST_LIST_TIMEOUT.as_secs()
            ))),
        }
    }

    pub(super) fn store_error(&self, reason: String) -> RemoteError {
        let hint = match self.url.split("://").next() {
            Some("s3") => {
                " (credentials come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a web \
                 identity token or the instance; AWS_ENDPOINT and AWS_ALLOW_HTTP name an \
                 S3-compatible server; AWS_REGION its region)"
            }
            Some("gs") => " (credentials come from GOOGLE_SERVICE_ACCOUNT or GOOGLE_APPLICATION_CREDENTIALS)",
            Some("az") | Some("abfs") | Some("abfss") => {
                " (credentials come from AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY or a service principal)"
            }
            _ => "",
        };
        // Without keys the S3 client asks the instance metadata service; where there is none,
        // its failure hides the real cause, which is the missing keys.
        let missing = self.url.starts_with("s3://")
            && reason.contains("/latest/api/token")
            && [
                "AWS_ACCESS_KEY_ID",
                "AWS_WEB_IDENTITY_TOKEN_FILE",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            ]
            .iter()
            .all(|k| std::env::var_os(k).is_none());
        let cause = if missing {
            "no credentials: AWS_ACCESS_KEY_ID is not set and the instance metadata service did not \
             answer; "
        } else {
            ""
        };
        RemoteError::Store {
            url: self.url.clone(),
            reason: format!("{cause}{}{hint}", crate::store::one_line(&reason)),
        }
    }

    /// Brings the mirror up to the store. Blocking work (renames, removals) runs on the blocking
    /// pool; downloads stream to disk.
    pub async fn sync(&self) -> Result<SyncReport, RemoteError> {
        let _one = self.syncing.lock().await;
        let local = |path: &Path, e: std::io::Error| RemoteError::Local {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        tokio::fs::create_dir_all(&self.mirror)
            .await
            .map_err(|e| local(&self.mirror, e))?;
        let listed = self.list().await?;
        let mut held = self.read_manifest().await;
        let mut report = SyncReport::default();
        let wanted = self.complete(&listed, &mut report).await?;

        for (model, files) in &wanted {
            let model_dir = self.mirror.join(model);
            let had = held.models.get(model).cloned().unwrap_or_default();
            for (name, object) in &files.files {
                if had.files.get(name) == Some(object) && model_dir.join(name).exists() {
                    continue;
                }
                let dest = model_dir.join(name);
                self.download(&format!("{model}/{name}"), &dest).await?;
                report.downloaded_files += 1;
            }
            for (version, objects) in &files.versions {
                let dir = model_dir.join(version.to_string());
                if had.versions.get(version) == Some(objects) && dir.is_dir() {
                    continue;
                }
                self.download_version(model, *version, objects).await?;
                report.downloaded_versions += 1;
            }
            for version in had
                .versions
                .keys()
                .filter(|v| !files.versions.contains_key(v))
            {
                remove_dir(&model_dir.join(version.to_string())).await?;
                report.removed_versions += 1;
            }
            for name in had.files.keys().filter(|n| !files.files.contains_key(*n)) {
                let _ = tokio::fs::remove_file(model_dir.join(name)).await;
                report.downloaded_files += 1;
            }
            held.models.insert(model.clone(), files.clone());
            self.write_manifest(&held).await?;
        }
        // Models gone from the store: what the mirror got from it goes; what it did not stays.
        let gone: Vec<String> = held
            .models
            .keys()
            .filter(|m| !wanted.contains_key(*m))
            .cloned()
            .collect();
        for model in gone {
            let files = held.models.remove(&model).unwrap_or_default();
            let model_dir = self.mirror.join(&model);
            for version in files.versions.keys() {
                remove_dir(&model_dir.join(version.to_string())).await?;
                report.removed_versions += 1;
            }
            for name in files.files.keys() {
                let _ = tokio::fs::remove_file(model_dir.join(name)).await;
            }
            // Empty now (nothing local of its own): the model leaves the repository.
            let _ = tokio::fs::remove_dir(&model_dir).await;
            self.write_manifest(&held).await?;
        }
        Ok(report)
    }

    /// Brings one model's `config.toml` and its highest complete version (if any) from the
    /// store into the mirror, nothing else: what `cairn train` needs to gate a candidate against
    /// the store's serving version and check it by loading, without mirroring a whole
    /// repository. Returns that version.
    pub async fn fetch_model(&self, model: &str) -> Result<Option<u64>, RemoteError> {
        let _one = self.syncing.lock().await;
        let listed = self.list_under(Some(model)).await?;
        let wanted = self.complete(&listed, &mut SyncReport::default()).await?;
        let Some(files) = wanted.get(model) else {
            return Ok(None);
        };
        for name in files.files.keys().filter(|n| *n == "config.toml") {
            let dest = self.mirror.join(model).join(name);
            self.download(&format!("{model}/{name}"), &dest).await?;
        }
        let Some((&version, objects)) = files.versions.iter().next_back() else {
            return Ok(None);
        };
        self.download_version(model, version, objects).await?;
        Ok(Some(version))
    }

    /// Every object under the prefix, by path below it.
    async fn list(&self) -> Result<BTreeMap<String, Listed>, RemoteError> {
        self.list_under(None).await
    }

    /// Every object under the prefix's `sub` directory (all of it when `None`), by path below
    /// the prefix.
    pub(super) async fn list_under(
        &self,
        sub: Option<&str>,
    ) -> Result<BTreeMap<String, Listed>, RemoteError> {
        let mut out = BTreeMap::new();
        let under = match sub {
            Some(sub) => self.object(sub),
            None => self.prefix.clone(),
        };
        let mut listing = self.store.list(Some(&under));
        while let Some(item) = listing.next().await {
            let meta = item.map_err(|e| self.store_error(format!("cannot list: {e}")))?;
            let Some(rel) = relative(&self.prefix, &meta.location) else {
                continue;
            };
            if out.len() == MAX_OBJECTS {
                return Err(self.store_error(format!(
                    "more than {MAX_OBJECTS} objects under the prefix; is it the repository's?"
                )));
            }
            let tag = meta.e_tag.clone().unwrap_or_else(|| {
                format!("{}-{}", meta.size, meta.last_modified.timestamp_micros())
            });
            out.insert(
                rel,
                Listed {
                    tag,
                    size: meta.size,
                },
            );
        }
        Ok(out)
    }

    /// The listing grouped by model, with only the complete versions.
    async fn complete(
        &self,
        listed: &BTreeMap<String, Listed>,
        report: &mut SyncReport,
    ) -> Result<BTreeMap<String, ModelFiles>, RemoteError> {
        let mut models: BTreeMap<String, ModelFiles> = BTreeMap::new();
        let mut incomplete: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
        for (rel, object) in listed {
            let mut parts = rel.splitn(3, '/');
            let (Some(model), Some(second)) = (parts.next(), parts.next()) else {
                continue;
            };
            if super::scan::check_name(model).is_err() || second.starts_with('.') {
                continue;
            }
            if object.size > MAX_OBJECT_BYTES {
                return Err(self.store_error(format!(
                    "{rel} is {} bytes, over the limit of {MAX_OBJECT_BYTES}",
                    object.size
                )));
            }
            let entry = models.entry(model.to_string()).or_default();
            match (super::scan::parse_version(second), parts.next()) {
                (Some(v), Some(file)) if safe_path(file) => {
                    entry
                        .versions
                        .entry(v)
                        .or_default()
                        .insert(file.to_string(), object.clone());
                }
                (None, None) => {
                    entry.files.insert(second.to_string(), object.clone());
                }
                _ => {}
            }
        }
        for (model, files) in &mut models {
            let model_file = match files.files.get("config.toml") {
                Some(_) => self.model_file_name(model).await?,
                None => "model.onnx".to_string(),
            };
            files.versions.retain(|version, objects| {
                let done = objects.contains_key(&model_file);
                if !done {
                    incomplete
                        .entry(model.clone())
                        .or_default()
                        .insert(*version);
                }
                done
            });
        }
        for (model, versions) in &incomplete {
            tracing::debug!(model = %model, versions = ?versions, "versions without their model file yet: not mirrored");
        }
        report.incomplete_versions = incomplete.values().map(BTreeSet::len).sum();
        Ok(models)
    }

    /// `default_model_filename` of the model's `config.toml` in the store.
    async fn model_file_name(&self, model: &str) -> Result<String, RemoteError> {
        #[derive(Deserialize)]
        struct Partial {
            default_model_filename: Option<String>,
        }
        let path = self.object(&format!("{model}/config.toml"));
        let got = self
            .store
            .get(&path)
            .await
            .map_err(|e| self.store_error(format!("cannot read {model}/config.toml: {e}")))?;
        if got.meta.size > MAX_CONFIG_BYTES {
            return Err(self.store_error(format!(
                "{model}/config.toml is over {MAX_CONFIG_BYTES} bytes"
            )));
        }
        let bytes = got
            .bytes()
            .await
            .map_err(|e| self.store_error(format!("cannot read {model}/config.toml: {e}")))?;
        // A config that does not parse is reported by the load, with its line; here it only
        // means the default name.
        let name = std::str::from_utf8(&bytes)
            .ok()
            .and_then(|t| toml::from_str::<Partial>(t).ok())
            .and_then(|p| p.default_model_filename)
            .filter(|n| safe_path(n))
            .unwrap_or_else(|| "model.onnx".into());
        Ok(name)
    }

    /// The store's path of `rel` (`a/b/c`) below the prefix.
    pub(super) fn object(&self, rel: &str) -> StorePath {
        let mut path = self.prefix.clone();
        for part in rel.split('/') {
            path = path.child(part);
        }
        path
    }

    /// Streams one object to `dest` through a temporary file beside it, then renames.
    async fn download(&self, rel: &str, dest: &Path) -> Result<(), RemoteError> {
        let local = |e: std::io::Error| RemoteError::Local {
            path: dest.to_path_buf(),
            reason: e.to_string(),
        };
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(local)?;
        }
        let tmp = dest.with_file_name(format!(
            ".{}.download",
            dest.file_name().and_then(|n| n.to_str()).unwrap_or("file")
        ));
        let got = self
            .store
            .get(&self.object(rel))
            .await
            .map_err(|e| self.store_error(format!("cannot read {rel}: {e}")))?;
        if got.meta.size > MAX_OBJECT_BYTES {
            return Err(self.store_error(format!("{rel} is over {MAX_OBJECT_BYTES} bytes")));
        }
        let mut file = tokio::fs::File::create(&tmp).await.map_err(local)?;
        let mut stream = got.into_stream();
        let mut written: u64 = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.store_error(format!("cannot read {rel}: {e}")))?;
            written += chunk.len() as u64;
            if written > MAX_OBJECT_BYTES {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(self.store_error(format!("{rel} is over {MAX_OBJECT_BYTES} bytes")));
            }
            file.write_all(&chunk).await.map_err(local)?;
        }
        file.sync_all().await.map_err(local)?;
        drop(file);
        tokio::fs::rename(&tmp, dest).await.map_err(local)
    }

    /// Downloads a version into a staging directory, then swaps it in whole.
    async fn download_version(
        &self,
        model: &str,
        version: u64,
        objects: &BTreeMap<String, Listed>,
    ) -> Result<(), RemoteError> {
        let staging = self
            .mirror
            .join(".incoming")
            .join(format!("{model}-{version}"));
        remove_dir(&staging).await?;
        for file in objects.keys() {
            let dest = file
                .split('/')
                .fold(staging.clone(), |p, part| p.join(part));
            self.download(&format!("{model}/{version}/{file}"), &dest)
                .await?;
        }
        let dir = self.mirror.join(model).join(version.to_string());
        let old = self
            .mirror
            .join(".incoming")
            .join(format!("{model}-{version}.old"));
        let local = |path: &Path, e: std::io::Error| RemoteError::Local {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        tokio::fs::create_dir_all(self.mirror.join(model))
            .await
            .map_err(|e| local(&dir, e))?;
        remove_dir(&old).await?;
        if dir.exists() {
            tokio::fs::rename(&dir, &old)
                .await
                .map_err(|e| local(&dir, e))?;
        }
        tokio::fs::rename(&staging, &dir)
            .await
            .map_err(|e| local(&dir, e))?;
        remove_dir(&old).await
    }

    async fn read_manifest(&self) -> Manifest {
        let path = self.mirror.join(MANIFEST);
        match tokio::fs::read(&path).await {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            Err(_) => Manifest::default(),
        }
    }

    async fn write_manifest(&self, manifest: &Manifest) -> Result<(), RemoteError> {
        let path = self.mirror.join(MANIFEST);
        let tmp = self.mirror.join(".cairn-mirror.json.tmp");
        let body = serde_json::to_vec_pretty(manifest).expect("the manifest serializes");
        let local = |e: std::io::Error| RemoteError::Local {
            path: path.clone(),
            reason: e.to_string(),
        };
        tokio::fs::write(&tmp, body).await.map_err(local)?;
        tokio::fs::rename(&tmp, &path).await.map_err(local)
    }
}

/// The store calls a publish makes (`upload`), each under its own time limit whatever the
/// store's client does, and each naming the object below the prefix in its error.
impl RemoteRepository {
    /// Writes an object, replacing any.
    pub(super) async fn put_object(
        &self,
        rel: &str,
        content: Vec<u8>,
        limit: Duration,
    ) -> Result<(), RemoteError> {
        let path = self.object(rel);
        let put = self.store.put(
            &path,
            object_store::PutPayload::from(bytes::Bytes::from(content)),
        );
        tokio::time::timeout(limit, put)
            .await
            .map_err(|_| self.late(&format!("the write of {rel}"), limit))?
            .map_err(|e| self.store_error(format!("cannot write {rel}: {e}")))?;
        Ok(())
    }

    /// Creates an object only if there is none: false when there is one already.
    pub(super) async fn create_object(
        &self,
        rel: &str,
        body: &[u8],
        limit: Duration,
    ) -> Result<bool, RemoteError> {
        let path = self.object(rel);
        let write = crate::store::write_if(self.store.as_ref(), &path, body.to_vec(), None);
        let written = tokio::time::timeout(limit, write)
            .await
            .map_err(|_| self.late(&format!("the creation of {rel}"), limit))?
            .map_err(|e| self.store_error(e))?;
        Ok(written.is_some())
    }

    /// A small object's bytes (at most `max_bytes`, else an error); `None` when absent.
    pub(super) async fn read_object(
        &self,
        rel: &str,
        max_bytes: u64,
        limit: Duration,
    ) -> Result<Option<bytes::Bytes>, RemoteError> {
        let path = self.object(rel);
        let read = crate::store::read_versioned(self.store.as_ref(), &path, max_bytes);
        let got = tokio::time::timeout(limit, read)
            .await
            .map_err(|_| self.late(&format!("the read of {rel}"), limit))?
            .map_err(|e| self.store_error(e))?;
        Ok(got.map(|(bytes, _)| bytes))
    }

    /// Copies an object inside the store. `Ok(false)`: no answer within `limit` (the copy may
    /// still happen).
    pub(super) async fn copy_object(
        &self,
        from: &str,
        to: &str,
        limit: Duration,
    ) -> Result<bool, RemoteError> {
        let (source, target) = (self.object(from), self.object(to));
        match tokio::time::timeout(limit, self.store.copy(&source, &target)).await {
            Ok(Ok(())) => Ok(true),
            Ok(Err(e)) => Err(self.store_error(format!("cannot write {to}: {e}"))),
            Err(_) => Ok(false),
        }
    }

    /// Deletes an object; one already gone is no error.
    pub(super) async fn delete_object(
        &self,
        rel: &str,
        limit: Duration,
    ) -> Result<(), RemoteError> {
        let path = self.object(rel);
        match tokio::time::timeout(limit, self.store.delete(&path)).await {
            Ok(Ok(())) | Ok(Err(object_store::Error::NotFound { .. })) => Ok(()),
            Ok(Err(e)) => Err(self.store_error(format!("cannot delete {rel}: {e}"))),
            Err(_) => Err(self.late(&format!("the deletion of {rel}"), limit)),
        }
    }

    fn late(&self, what: &str, limit: Duration) -> RemoteError {
        self.store_error(format!("no answer to {what} within {} s", limit.as_secs()))
    }
}

/// `location` below `prefix`, as `a/b/c`.
fn relative(prefix: &StorePath, location: &StorePath) -> Option<String> {
    let parts: Vec<String> = location
        .prefix_match(prefix)?
        .map(|p| p.as_ref().to_string())
        .collect();
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// A relative path with plain components only: nothing hidden, nothing climbing out.
fn safe_path(path: &str) -> bool {
    !path.is_empty()
        && path
            .split('/')
            .all(|c| !c.is_empty() && !c.starts_with('.') && !c.contains('\\') && c != "..")
}

async fn remove_dir(dir: &Path) -> Result<(), RemoteError> {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RemoteError::Local {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(dir: &Path, rel: &str, body: &str) {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
    }

    #[tokio::test]
    async fn mirrors_complete_versions_only_and_follows_changes() {
        let store = tempfile::tempdir().unwrap();
        let mirror = tempfile::tempdir().unwrap();
        let url = format!("file://{}/repo", store.path().display());
        let root = store.path().join("repo");
        put(&root, "m/config.toml", "max_batch_size = 4\n");
        put(&root, "m/1/model.onnx", "one");
        put(&root, "m/2/sample.json", "{}");
        let remote = RemoteRepository::open(&url, mirror.path().to_path_buf()).unwrap();
        remote.check().await.unwrap();
        let r = remote.sync().await.unwrap();
        assert_eq!((r.downloaded_versions, r.incomplete_versions), (1, 1));
        assert_eq!(
            std::fs::read_to_string(mirror.path().join("m/1/model.onnx")).unwrap(),
            "one"
        );
        assert!(
            !mirror.path().join("m/2").exists(),
            "half a version is not mirrored"
        );
        assert!(!remote.sync().await.unwrap().changed(), "nothing new");

        put(&root, "m/2/model.onnx", "two");
        std::fs::create_dir_all(mirror.path().join("m/7")).unwrap(); // published here
        let r = remote.sync().await.unwrap();
        assert_eq!(r.downloaded_versions, 1);
        assert_eq!(
            std::fs::read_to_string(mirror.path().join("m/2/sample.json")).unwrap(),
            "{}"
        );

        std::fs::remove_dir_all(root.join("m/1")).unwrap();
        let r = remote.sync().await.unwrap();
        assert_eq!(r.removed_versions, 1);
        assert!(!mirror.path().join("m/1").exists());
        assert!(mirror.path().join("m/7").exists(), "a local version stays");

        // A config naming another model file changes what complete means.
        put(
            &root,
            "m/config.toml",
            "default_model_filename = \"net.onnx\"\n",
        );
        let r = remote.sync().await.unwrap();
        assert_eq!(r.removed_versions, 1, "version 2 has no net.onnx");
        put(&root, "m/2/net.onnx", "net");
        assert_eq!(remote.sync().await.unwrap().downloaded_versions, 1);
    }

    #[test]
    fn paths_that_climb_or_hide_are_refused() {
        assert!(safe_path("model.onnx"));
        assert!(safe_path("sub/weights.bin"));
        assert!(!safe_path("../x"));
        assert!(!safe_path(".hidden"));
        assert!(!safe_path("a//b"));
        assert_eq!(crate::repository::scan::parse_version("3"), Some(3));
        assert_eq!(crate::repository::scan::parse_version("0"), None);
        assert_eq!(crate::repository::scan::parse_version("v1"), None);
    }

    #[test]
    fn a_bad_url_is_named() {
        let e = RemoteRepository::open("nope://x/y", PathBuf::from("/tmp/m"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("nope://x/y"), "{e}");
    }
}
