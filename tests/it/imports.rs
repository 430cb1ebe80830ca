//! The module boundaries that keep the front ends from drifting apart, checked on the source
//! (as rust-analyzer's tidy test does): a forbidden path named anywhere in a module's files,
//! `use` or inline, fails with the file and line.

use std::path::{Path, PathBuf};

use crate::common;

/// `(module directory under src/, what its files must never name, why)`.
const RULES: &[(&str, &[&str], &str)] = &[
    (
        "grpc",
        &["crate::http", "super::http"],
        "gRPC is a codec over `service`; what it shares with HTTP lives there or in `listener`",
    ),
    (
        "http",
        &["crate::grpc", "super::grpc"],
        "HTTP is a codec over `service`; what it shares with gRPC lives there or in `listener`",
    ),
    (
        "service",
        &["crate::http", "crate::grpc", "hyper::", "tonic::", "http::"],
        "the service layer knows no front end and no wire format",
    ),
    (
        "listener",
        &["crate::http", "crate::grpc"],
        "the accept loop serves both front ends and knows neither",
    ),
    (
        "protocol",
        &["crate::http", "crate::grpc", "crate::service"],
        "the V2 codec is below every front end",
    ),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn modules_import_only_across_their_boundaries() {
    let src = common::root().join("src");
    let mut broken = Vec::new();
    for (module, forbidden, why) in RULES {
        let mut files = Vec::new();
        rust_files(&src.join(module), &mut files);
        assert!(!files.is_empty(), "src/{module} has no files");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for path in *forbidden {
                    // `http::` alone would match `hyper::http::` and `crate::http::`; a
                    // forbidden crate path must start the path.
                    let hit = code.match_indices(path).any(|(i, _)| {
                        i == 0
                            || !code.as_bytes()[i - 1].is_ascii_alphanumeric()
                                && code.as_bytes()[i - 1] != b'_'
                                && code.as_bytes()[i - 1] != b':'
                    });
                    if hit {
                        broken.push(format!(
                            "{}:{}: names `{path}`: {why}",
                            file.strip_prefix(common::root()).unwrap().display(),
                            n + 1
                        ));
                    }
                }
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}
