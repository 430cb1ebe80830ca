//! Where a training job may read its config from: inside `train_config_dir`, nowhere else.
//!
//! A model's `[retrain] config` comes from its `config.toml`, which the repository load API
//! accepts from any client when no admin token is set; the server then reads the file it
//! names. So the name is resolved inside the operator's config directory (relative names
//! against it, `..` refused) before anything touches the file system, and a name outside gets
//! one answer whether or not that path exists: the API cannot probe the server's files. What
//! is inside the directory is the operator's, links included, and is read as a bounded regular
//! file (`TrainConfig::load`).

use std::path::{Component, Path, PathBuf};

/// The config file `given` names, inside `dir`. A relative name is resolved against `dir`,
/// unless it already starts with `dir` as written (`configs/train/iris.toml` with the default
/// `configs/train`), which then stands as it is; an absolute one must lie inside `dir`. Any
/// `..` is refused. Purely lexical: nothing is read, so the answer says nothing about the
/// file system.
pub fn resolve(dir: &Path, given: &str) -> Result<PathBuf, String> {
    let refused = || {
        format!(
            "[retrain] config '{given}' must name a file inside train_config_dir (a relative \
             name is resolved against it; '..' is refused)"
        )
    };
    let path = Path::new(given);
    if given.is_empty()
        || path
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::Prefix(_)))
    {
        return Err(refused());
    }
    let path = lexical(path);
    let dir = lexical(dir);
    let inside = |p: &Path| p.starts_with(&dir) && p != dir;
    let resolved = if path.is_absolute() {
        let dir = std::path::absolute(&dir).map_err(|_| refused())?;
        if !(path.starts_with(&dir) && path != dir) {
            return Err(refused());
        }
        path
    } else if inside(&path) {
        path
    } else {
        dir.join(path)
    };
    Ok(resolved)
}

/// The path without `.` components (`./a/./b` is `a/b`).
fn lexical(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_inside_the_config_dir_only() {
        let dir = Path::new("configs/train");
        for (given, expected) in [
            ("iris.toml", "configs/train/iris.toml"),
            ("./iris.toml", "configs/train/iris.toml"),
            ("sub/iris.toml", "configs/train/sub/iris.toml"),
            ("configs/train/iris.toml", "configs/train/iris.toml"),
            ("./configs/train/iris.toml", "configs/train/iris.toml"),
        ] {
            assert_eq!(resolve(dir, given).unwrap(), Path::new(expected), "{given}");
        }
        let absolute = std::path::absolute(dir).unwrap().join("iris.toml");
        assert_eq!(resolve(dir, absolute.to_str().unwrap()).unwrap(), absolute);
        for given in [
            "/dev/zero",
            "/etc/passwd",
            "/nonexistent/x.toml",
            "../train/iris.toml",
            "sub/../../x.toml",
            "configs/train/../../x.toml",
            "",
        ] {
            let err = resolve(dir, given).unwrap_err();
            assert_eq!(
                err,
                format!(
                    "[retrain] config '{given}' must name a file inside train_config_dir (a \
                     relative name is resolved against it; '..' is refused)"
                )
            );
        }
        let abs_dir = Path::new("/srv/train");
        assert_eq!(
            resolve(abs_dir, "/srv/train/a.toml").unwrap(),
            Path::new("/srv/train/a.toml")
        );
        assert!(resolve(abs_dir, "/srv/trainer/a.toml").is_err());
        assert!(resolve(abs_dir, "/srv/train").is_err());
    }
}
