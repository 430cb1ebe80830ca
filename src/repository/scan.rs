//! Reading the repository's directory layout.

use std::io;
use std::path::{Component, Path};
use std::time::SystemTime;

use super::RepositoryError;

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
        let parsed = entry.file_name().to_str().and_then(|n| {
            n.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| n.parse::<u64>().ok())
                .flatten()
        });
        if let Some(v) = parsed.filter(|&v| v > 0) {
            versions.push(v);
        }
    }
    versions.sort_unstable();
    Ok(versions)
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

/// Writes the files of an explicit load into a fresh directory laid out as a repository.
pub fn write_override(
    name: &str,
    files: &[(String, Vec<u8>)],
) -> Result<tempfile::TempDir, RepositoryError> {
    let tmp = tempfile::Builder::new()
        .prefix("cairn-load-")
        .tempdir()
        .map_err(|e| {
            RepositoryError::Io(format!("cannot create a directory for loaded files: {e}"))
        })?;
    let model_dir = tmp.path().join(name);
    for (rel, content) in files {
        let rel_path = Path::new(rel);
        let safe = rel_path
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        if !safe || rel.is_empty() {
            return Err(RepositoryError::BadRequest(format!(
                "file parameter 'file:{rel}' must be a relative path inside the model directory"
            )));
        }
        let path = model_dir.join(rel_path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| {
                RepositoryError::Io(format!("cannot write {}: {e}", path.display()))
            })?;
        }
        std::fs::write(&path, content)
            .map_err(|e| RepositoryError::Io(format!("cannot write {}: {e}", path.display())))?;
    }
    std::fs::create_dir_all(&model_dir)
        .map_err(|e| RepositoryError::Io(format!("cannot create {}: {e}", model_dir.display())))?;
    Ok(tmp)
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
        let err = write_override("m", &[("../escape".into(), vec![1])]).unwrap_err();
        assert!(err.to_string().contains("relative path"));
        let tmp = write_override("m", &[("2/model.onnx".into(), vec![1, 2])]).unwrap();
        assert_eq!(
            std::fs::read(tmp.path().join("m/2/model.onnx")).unwrap(),
            vec![1, 2]
        );
    }
}
