//! Reading the repository's directory layout.

use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use super::RepositoryError;
use crate::config::{LoadLimits, ModelConfig};

/// Model directories under the root, sorted; hidden entries are skipped.
pub fn model_names(root: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        if let Some(name) = entry.file_name().to_str() {
            if check_name(name).is_ok() {
                names.push(name.to_string());
            }
        }
    }
    names.sort();
    Ok(names)
}

/// Version directories of a model: positive integers only, as in Triton; others are ignored.
pub fn version_dirs(model_dir: &Path) -> io::Result<Vec<u64>> {
    let mut versions = Vec::new();
    for entry in std::fs::read_dir(model_dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        if let Some(v) = entry.file_name().to_str().and_then(parse_version) {
            versions.push(v);
        }
    }
    versions.sort_unstable();
    Ok(versions)
}

/// A version directory's name as its number: a positive integer in plain digits.
pub fn parse_version(name: &str) -> Option<u64> {
    name.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| name.parse::<u64>().ok())
        .flatten()
        .filter(|&v| v > 0)
}

/// A model name must be one plain path component.
pub fn check_name(name: &str) -> Result<(), ()> {
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && name.len() <= 255;
    if plain {
        Ok(())
    } else {
        Err(())
    }
}

/// What identifies a model file's content cheaply: a changed file gets a new fingerprint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    len: u64,
    modified: Option<SystemTime>,
}

impl Fingerprint {
    pub fn of(path: &Path) -> Option<Fingerprint> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Fingerprint {
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }
}

/// What a model directory holds: `config.toml` and every file of every version directory, with
/// their fingerprints. A rescan reloads a model whose signature changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirSignature(Vec<(String, Option<Fingerprint>)>);

impl DirSignature {
    pub fn of(model_dir: &Path) -> DirSignature {
        let mut entries = vec![(
            "config.toml".to_string(),
            Fingerprint::of(&model_dir.join("config.toml")),
        )];
        for v in version_dirs(model_dir).unwrap_or_default() {
            let dir = model_dir.join(v.to_string());
            let mut files: Vec<(String, Option<Fingerprint>)> = std::fs::read_dir(&dir)
                .map(|rd| {
                    rd.filter_map(Result::ok)
                        .map(|e| {
                            (
                                format!("{v}/{}", e.file_name().to_string_lossy()),
                                Fingerprint::of(&e.path()),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            files.sort_by(|a, b| a.0.cmp(&b.0));
            if files.is_empty() {
                files.push((format!("{v}/"), None));
            }
            entries.extend(files);
        }
        DirSignature(entries)
    }
}

/// What a model directory holds, read in one pass on the blocking pool: everything a reconcile
/// needs from the file system.
pub struct Survey {
    pub signature: DirSignature,
    /// The configuration given with the load, or `config.toml`'s (defaults when absent).
    pub config: Result<ModelConfig, String>,
    /// Version directories present.
    pub available: io::Result<Vec<u64>>,
    /// The versions the policy selects, highest first, with their model file.
    pub selected: Vec<FoundVersion>,
}

pub struct FoundVersion {
    pub version: u64,
    pub path: PathBuf,
    pub fingerprint: Option<Fingerprint>,
}

/// Surveys `dir`; `None` when it is not a directory. Blocking.
pub fn survey(dir: &Path, name: &str, config: Option<ModelConfig>) -> Option<Survey> {
    if !dir.is_dir() {
        return None;
    }
    let signature = DirSignature::of(dir);
    let config = match config {
        Some(c) => Ok(c),
        None => ModelConfig::load(dir, name).map_err(|e| e.to_string()),
    };
    let available = version_dirs(dir);
    let selected = match (&config, &available) {
        (Ok(c), Ok(versions)) => c
            .version_policy
            .select(versions)
            .into_iter()
            .map(|version| {
                let path = dir
                    .join(version.to_string())
                    .join(&c.default_model_filename);
                FoundVersion {
                    version,
                    fingerprint: Fingerprint::of(&path),
                    path,
                }
            })
            .collect(),
        _ => Vec::new(),
    };
    Some(Survey {
        signature,
        config,
        available,
        selected,
    })
}

/// Every model directory under `root` with its signature. Blocking.
pub fn listing(root: &Path) -> io::Result<Vec<(String, DirSignature)>> {
    Ok(model_names(root)?
        .into_iter()
        .map(|name| {
            let signature = DirSignature::of(&root.join(&name));
            (name, signature)
        })
        .collect())
}

/// Writes the files of an explicit load into a fresh directory under `uploads` laid out as a
/// repository. Blocking. Errors never show the server's own paths: those are logged.
pub fn write_override(
    uploads: &Path,
    name: &str,
    files: &[(String, Vec<u8>)],
) -> Result<tempfile::TempDir, RepositoryError> {
    let paths = files
        .iter()
        .map(|(rel, _)| upload_path(rel))
        .collect::<Result<Vec<_>, _>>()?;
    let internal = |what: &str, path: &Path, e: std::io::Error| {
        tracing::error!(path = %path.display(), error = %e, "cannot {what}");
        RepositoryError::Io(format!(
            "cannot {what} for the uploaded files ({})",
            e.kind()
        ))
    };
    std::fs::create_dir_all(uploads)
        .map_err(|e| internal("create the upload directory", uploads, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(UPLOAD_PREFIX)
        .tempdir_in(uploads)
        .map_err(|e| internal("create a directory", uploads, e))?;
    let model_dir = tmp.path().join(name);
    std::fs::create_dir_all(&model_dir)
        .map_err(|e| internal("create a directory", &model_dir, e))?;
    write_files(&model_dir, files, &paths, false, |path, e| {
        internal("write a file", path, e)
    })?;
    Ok(tmp)
}

/// Where [`stage_version`] writes, under the repository root; hidden, so no scan sees it.
pub const STAGING_DIR: &str = ".staging";

/// The file a server's training job adds to the versions it publishes: a version whose
/// directory holds it was trained by a server (the job's run, replica and lease generation are
/// in it), wherever it is loaded.
pub const TRAINED_MARKER: &str = "trained.json";

/// Writes a version into `<root>/.staging/`, checks it by loading it, and renames it into
/// `<root>/<model>/<version>`. Blocking. Returns the version. On any failure nothing is left in
/// the repository and the staged files are removed.
pub fn stage_version(
    root: &Path,
    model: &str,
    version: Option<u64>,
    files: &[(String, Vec<u8>)],
    config: Option<ModelConfig>,
    limits: &LoadLimits,
) -> Result<u64, RepositoryError> {
    stage(root, model, version, files, config, limits)?.place()
}

/// A version written into `<root>/.staging/` and checked by loading it: renamed into place by
/// [`Staged::place`], or dropped (its files removed) once uploaded elsewhere.
pub struct Staged {
    /// Holds the staged files; removed when dropped.
    _stage: tempfile::TempDir,
    staged_version: PathBuf,
    model_dir: PathBuf,
    pub version: u64,
    /// The model file's path in the version (`default_model_filename`).
    pub model_file: String,
    /// The new `config.toml`, for a model that had none.
    pub config_text: Option<String>,
}

/// Stages and checks a version as [`stage_version`] does, without placing it. `version`
/// defaults to one above the highest present under `root`. Blocking.
pub fn stage(
    root: &Path,
    model: &str,
    version: Option<u64>,
    files: &[(String, Vec<u8>)],
    config: Option<ModelConfig>,
    limits: &LoadLimits,
) -> Result<Staged, RepositoryError> {
    let paths = files
        .iter()
        .map(|(rel, _)| upload_path(rel))
        .collect::<Result<Vec<_>, _>>()?;
    let io = |what: &str, path: &Path, e: std::io::Error| publish_io(what, path, e);
    let model_dir = root.join(model);
    let existing = ModelConfig::load(&model_dir, model)
        .map_err(|e| RepositoryError::BadRequest(e.to_string()))?;
    let has_config = model_dir.join("config.toml").is_file();
    let config = match (config, has_config) {
        (Some(_), true) => {
            return Err(RepositoryError::Conflict(format!(
                "model '{model}' already has a config.toml; publish without one"
            )))
        }
        (Some(c), false) => {
            c.validate(model).map_err(|(key, reason)| {
                RepositoryError::BadRequest(format!("config: key '{key}': {reason}"))
            })?;
            Some(c)
        }
        (None, _) => None,
    };
    let present = version_dirs(&model_dir).unwrap_or_default();
    let version = version.unwrap_or_else(|| present.iter().max().map_or(1, |v| v + 1));
    if version == 0 || present.contains(&version) {
        return Err(RepositoryError::Conflict(format!(
            "model '{model}' already has version {version}"
        )));
    }
    let staging = root.join(STAGING_DIR);
    std::fs::create_dir_all(&staging)
        .map_err(|e| io("create the staging directory", &staging, e))?;
    let stage = tempfile::Builder::new()
        .prefix(&format!("{model}-"))
        .tempdir_in(&staging)
        .map_err(|e| io("create a staging directory", &staging, e))?;
    // Staged as a model directory of its own, so warm-up files resolve as they will in place.
    let staged_model = stage.path().join(model);
    let staged_version = staged_model.join(version.to_string());
    std::fs::create_dir_all(&staged_version)
        .map_err(|e| io("create a directory", &staged_version, e))?;
    write_files(&staged_version, files, &paths, true, |path, e| {
        io("write a file", path, e)
    })?;
    let effective = config.clone().unwrap_or(existing);
    if has_config {
        std::fs::copy(
            model_dir.join("config.toml"),
            staged_model.join("config.toml"),
        )
        .map_err(|e| io("copy config.toml", &staged_model, e))?;
    }
    let model_file = staged_version.join(&effective.default_model_filename);
    if !model_file.is_file() {
        return Err(RepositoryError::BadRequest(format!(
            "the published files have no '{}' (default_model_filename)",
            effective.default_model_filename
        )));
    }
    crate::model::check_version(&model_file, &effective, limits).map_err(|e| {
        RepositoryError::LoadFailed {
            model: model.to_string(),
            reason: format!("version {version}: {e}"),
        }
    })?;
    Ok(Staged {
        _stage: stage,
        staged_version,
        model_dir,
        version,
        model_file: effective.default_model_filename.clone(),
        config_text: config
            .map(|c| toml::to_string(&c).expect("a model configuration serializes to TOML")),
    })
}

impl Staged {
    /// Renames the staged version into `<root>/<model>/<version>` (after writing the model's
    /// new `config.toml`, if any). Blocking.
    pub fn place(self) -> Result<u64, RepositoryError> {
        let io = |what: &str, path: &Path, e: std::io::Error| publish_io(what, path, e);
        let model_dir = &self.model_dir;
        std::fs::create_dir_all(model_dir)
            .map_err(|e| io("create the model directory", model_dir, e))?;
        if let Some(text) = &self.config_text {
            let tmp = tempfile::NamedTempFile::new_in(model_dir)
                .map_err(|e| io("write config.toml", model_dir, e))?;
            std::fs::write(tmp.path(), text).map_err(|e| io("write config.toml", model_dir, e))?;
            tmp.persist(model_dir.join("config.toml"))
                .map_err(|e| io("write config.toml", model_dir, e.error))?;
        }
        let target = model_dir.join(self.version.to_string());
        std::fs::rename(&self.staged_version, &target)
            .map_err(|e| io("move the version into place", &target, e))?;
        if let Ok(dir) = std::fs::File::open(model_dir) {
            let _ = dir.sync_all();
        }
        Ok(self.version)
    }
}

/// A file-system failure while publishing: the path is logged, not shown.
fn publish_io(what: &str, path: &Path, e: std::io::Error) -> RepositoryError {
    tracing::error!(path = %path.display(), error = %e, "cannot {what}");
    RepositoryError::Io(format!("cannot {what} while publishing ({})", e.kind()))
}

/// Writes `files` under `dir` at their checked relative `paths` (synced when `sync`). Two files
/// that cannot both exist (`1` and `1/model.onnx`) are the caller's mistake (400); any other
/// failure goes through `internal`, which logs the server's path and hides it.
fn write_files(
    dir: &Path,
    files: &[(String, Vec<u8>)],
    paths: &[PathBuf],
    sync: bool,
    internal: impl Fn(&Path, std::io::Error) -> RepositoryError,
) -> Result<(), RepositoryError> {
    for ((rel, content), rel_path) in files.iter().zip(paths) {
        let path = dir.join(rel_path);
        let written = match path.parent() {
            Some(parent) => std::fs::create_dir_all(parent),
            None => Ok(()),
        }
        .and_then(|()| std::fs::write(&path, content))
        .and_then(|()| {
            if sync {
                std::fs::File::open(&path)?.sync_all()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            use std::io::ErrorKind::*;
            return Err(match e.kind() {
                AlreadyExists | NotADirectory | IsADirectory | DirectoryNotEmpty => {
                    RepositoryError::BadRequest(format!(
                        "file '{rel}' conflicts with another file of the same load"
                    ))
                }
                _ => internal(&path, e),
            });
        }
    }
    Ok(())
}

/// Prefix of the directories that hold uploaded files while they serve.
pub const UPLOAD_PREFIX: &str = "load-";

/// Removes what a previous run left behind (it crashed, or was killed before it could clean
/// up): upload directories under `uploads` and staged versions under `<root>/.staging`.
/// Blocking.
pub fn clean_stale(uploads: &Path, root: &Path) {
    remove_entries(uploads, |n| n.starts_with(UPLOAD_PREFIX));
    remove_entries(&root.join(STAGING_DIR), |_| true);
}

fn remove_entries(dir: &Path, matches: impl Fn(&str) -> bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry.file_name().to_str().is_some_and(&matches);
        if stale {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => {
                    tracing::info!(path = %entry.path().display(), "removed a stale upload directory")
                }
                Err(e) => {
                    tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove a stale upload directory")
                }
            }
        }
    }
}

/// The relative path of a `file:` parameter: plain names separated by `/`, nothing that could
/// leave the model directory or that the file system would refuse.
fn upload_path(rel: &str) -> Result<PathBuf, RepositoryError> {
    let bad = || {
        RepositoryError::BadRequest(format!(
            "file parameter 'file:{}' must be a relative path of plain names inside the model \
             directory, such as 'file:1/model.onnx'",
            rel.escape_debug()
        ))
    };
    if rel.is_empty() || rel.len() > 1024 {
        return Err(bad());
    }
    let mut path = PathBuf::new();
    for segment in rel.split('/') {
        let plain = !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment.len() <= 255
            && !segment.contains(['\\', '\0'])
            && Path::new(segment)
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        if !plain {
            return Err(bad());
        }
        path.push(segment);
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_positive_integers() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["1", "3", "0", "abc", "007", "-2", "12"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("5"), b"a file, not a directory").unwrap();
        assert_eq!(version_dirs(dir.path()).unwrap(), vec![1, 3, 7, 12]);
    }

    #[test]
    fn signatures_see_new_versions_and_changed_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("1")).unwrap();
        std::fs::write(dir.path().join("1/model.onnx"), b"a").unwrap();
        let a = DirSignature::of(dir.path());
        assert_eq!(a, DirSignature::of(dir.path()));
        std::fs::create_dir(dir.path().join("2")).unwrap();
        let b = DirSignature::of(dir.path());
        assert_ne!(a, b);
        std::fs::write(dir.path().join("2/model.onnx"), b"bb").unwrap();
        assert_ne!(b, DirSignature::of(dir.path()));
        std::fs::write(dir.path().join("config.toml"), b"max_batch_size = 1").unwrap();
        assert_ne!(b, DirSignature::of(dir.path()));
    }

    #[test]
    fn names_are_single_components() {
        assert!(check_name("iris").is_ok());
        for bad in ["", ".hidden", "a/b", "..", "a\\b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn override_paths_stay_inside() {
        let uploads = tempfile::tempdir().unwrap();
        for bad in [
            "../escape",
            "1/.",
            ".",
            "1//x",
            "/abs",
            "1/a\0b",
            "1\\x",
            "",
            "1/..",
        ] {
            let err = write_override(uploads.path(), "m", &[(bad.into(), vec![1])]).unwrap_err();
            assert!(
                matches!(err, RepositoryError::BadRequest(_))
                    && err.to_string().contains("plain names"),
                "{bad:?}: {err}"
            );
            assert!(
                !err.to_string().contains(&*uploads.path().to_string_lossy()),
                "{err}"
            );
        }
        let err = write_override(
            uploads.path(),
            "m",
            &[("1".into(), vec![1]), ("1/model.onnx".into(), vec![2])],
        )
        .unwrap_err();
        assert!(err.to_string().contains("conflicts"), "{err}");
        let tmp =
            write_override(uploads.path(), "m", &[("2/model.onnx".into(), vec![1, 2])]).unwrap();
        assert_eq!(
            std::fs::read(tmp.path().join("m/2/model.onnx")).unwrap(),
            vec![1, 2]
        );
        assert!(tmp.path().starts_with(uploads.path()));
    }

    #[test]
    fn stale_uploads_are_removed() {
        let uploads = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(uploads.path().join("load-abc/m/1")).unwrap();
        std::fs::create_dir_all(uploads.path().join("other")).unwrap();
        clean_stale(uploads.path(), uploads.path());
        assert!(!uploads.path().join("load-abc").exists());
        assert!(uploads.path().join("other").exists());
    }
}
