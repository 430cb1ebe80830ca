//! Finding cuBLAS and NVRTC where the dynamic loader would not look. cudarc opens them by SONAME
//! (`libcublas.so.13`, `libnvrtc.so.13`); on a typical GPU host they come from pip's `nvidia-*`
//! CUDA 13 wheels inside a Python environment (`site-packages/nvidia/cu13/lib`), which is on no
//! loader path. glibc reads `LD_LIBRARY_PATH` once at process start, so setting it later changes
//! nothing; instead each library found in the configured directories is opened by its full path,
//! globally, before cudarc looks: a later open by SONAME then finds the one already loaded.
//!
//! The directories come from the server's `cuda_library_path` setting, or else the
//! `CAIRN_CUDA_LIBRARY_PATH` environment variable (so `cairn selftest` and the benchmarks find
//! the same ones), `:`-separated. Each directory is searched itself, then its `*/lib` and
//! `*/*/lib` subdirectories, so `site-packages` or `site-packages/nvidia` both do.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The variable read when the setting is not given.
pub const PATH_ENV: &str = "CAIRN_CUDA_LIBRARY_PATH";

/// In load order: cuBLASLt before cuBLAS (which needs it), NVRTC's builtins before NVRTC.
const WANTED: [(&str, &str); 4] = [
    ("cuBLASLt", "libcublasLt.so.13"),
    ("cuBLAS", "libcublas.so.13"),
    ("NVRTC builtins", "libnvrtc-builtins.so.13"),
    ("NVRTC", "libnvrtc.so.13"),
];

/// What was opened from the directories, and what was looked for there in vain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Preloaded {
    pub directories: Vec<PathBuf>,
    /// (what, the file opened).
    pub opened: Vec<(&'static str, PathBuf)>,
    /// (what, why not): not found in any directory, or found and not loadable.
    pub not_opened: Vec<(&'static str, String)>,
}

static PATH: OnceLock<Vec<PathBuf>> = OnceLock::new();
static PRELOADED: OnceLock<Preloaded> = OnceLock::new();

/// Names the directories (the `cuda_library_path` setting). Only the first call counts, and only
/// before the first GPU lookup.
pub fn set_library_path(dirs: Vec<PathBuf>) {
    let _ = PATH.set(dirs);
}

/// Splits a `:`-separated list, dropping empty entries.
pub fn split_path(list: &str) -> Vec<PathBuf> {
    list.split(':')
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect()
}

fn configured() -> Vec<PathBuf> {
    PATH.get_or_init(|| {
        std::env::var(PATH_ENV)
            .map(|v| split_path(&v))
            .unwrap_or_default()
    })
    .clone()
}

/// Opens, once per process, what the configured directories hold.
pub fn preload() -> &'static Preloaded {
    PRELOADED.get_or_init(|| preload_from(&configured()))
}

fn preload_from(dirs: &[PathBuf]) -> Preloaded {
    let mut report = Preloaded {
        directories: dirs.to_vec(),
        ..Preloaded::default()
    };
    if dirs.is_empty() {
        return report;
    }
    let searched: Vec<PathBuf> = dirs.iter().flat_map(|d| search_dirs(d)).collect();
    for (what, soname) in WANTED {
        let Some(file) = searched.iter().find_map(|d| find(d, soname)) else {
            report
                .not_opened
                .push((what, format!("no {soname}* in {}", list(dirs))));
            continue;
        };
        // SAFETY: these are NVIDIA's libraries, whose initialisers only set up their own state;
        // the handle is kept for the life of the process (never closed under cudarc).
        let opened = unsafe {
            libloading::os::unix::Library::open(
                Some(&file),
                libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
            )
        };
        match opened {
            Ok(lib) => {
                std::mem::forget(lib);
                report.opened.push((what, file));
            }
            Err(e) => report
                .not_opened
                .push((what, format!("{}: {e}", file.display()))),
        }
    }
    report
}

fn list(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// `dir`, then its `*/lib` and `*/*/lib`, those that exist.
fn search_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let children = |d: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(d)
            .map(|r| {
                r.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    for a in children(dir) {
        if a.join("lib").is_dir() {
            out.push(a.join("lib"));
        }
        for b in children(&a) {
            if b.join("lib").is_dir() {
                out.push(b.join("lib"));
            }
        }
    }
    out
}

/// The file in `dir` named `soname` or `soname.<more>` (the shortest such name: the SONAME
/// itself when it is there).
fn find(dir: &Path, soname: &str) -> Option<PathBuf> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n == soname || n.starts_with(&format!("{soname}.")))
        .collect();
    names.sort_by_key(|n| (n.len(), n.clone()));
    names.first().map(|n| dir.join(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_wheel_layout_and_says_what_is_missing() {
        let root = std::env::temp_dir().join(format!("cairn-culib-{}", std::process::id()));
        let lib = root.join("nvidia/cu13/lib");
        std::fs::create_dir_all(&lib).unwrap();
        // Not real libraries: found by name, then refused by the loader with its reason.
        std::fs::write(lib.join("libcublas.so.13"), b"not an ELF").unwrap();
        std::fs::write(lib.join("libnvrtc-builtins.so.13.0"), b"not an ELF").unwrap();
        assert!(search_dirs(&root).contains(&lib));
        assert_eq!(
            find(&lib, "libnvrtc-builtins.so.13"),
            Some(lib.join("libnvrtc-builtins.so.13.0"))
        );
        assert_eq!(find(&lib, "libnvrtc.so.13"), None);

        let report = preload_from(std::slice::from_ref(&root));
        assert!(report.opened.is_empty());
        let reasons: Vec<&str> = report.not_opened.iter().map(|(w, _)| *w).collect();
        assert_eq!(reasons, ["cuBLASLt", "cuBLAS", "NVRTC builtins", "NVRTC"]);
        let cublas = &report.not_opened[1].1;
        assert!(cublas.contains("libcublas.so.13"), "{cublas}");
        assert!(report.not_opened[0].1.starts_with("no libcublasLt.so.13*"));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn no_directories_open_nothing() {
        assert_eq!(preload_from(&[]), Preloaded::default());
        assert_eq!(
            split_path("a::b:"),
            vec![PathBuf::from("a"), PathBuf::from("b")]
        );
    }
}
