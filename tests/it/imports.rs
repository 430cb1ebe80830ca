//! Rules on the source itself, checked as rust-analyzer's tidy test does: the module boundaries
//! that keep the front ends from drifting apart (a forbidden path named anywhere in a module's
//! files, `use` or inline, fails with the file and line), and the longest a function may be.

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
    // Object stores are opened in `store` and used only by the parts that keep state there.
    let store_users = [
        "src/store.rs",
        "src/repository/remote.rs",
        "src/rollout/shared.rs",
        "src/rollout/trials.rs",
        "src/monitoring/relay.rs",
        "src/lease.rs",
        "src/monitoring/log_store/mod.rs",
        "src/monitoring/log_store/read.rs",
        "src/monitoring/log_store/upload.rs",
    ];
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    for file in &files {
        let rel = file.strip_prefix(common::root()).unwrap();
        let text = std::fs::read_to_string(file).unwrap();
        let names = text.lines().any(|l| {
            l.split("//")
                .next()
                .unwrap_or("")
                .contains("object_store::")
        });
        if names && !store_users.iter().any(|u| rel == Path::new(u)) {
            broken.push(format!(
                "{}: names `object_store::`: store access goes through `crate::store`",
                rel.display()
            ));
        }
        let opens = text.contains("parse_url");
        if opens && rel != Path::new("src/store.rs") {
            broken.push(format!(
                "{}: opens a store outside `crate::store`",
                rel.display()
            ));
        }
    }
    // The command line's own code is called by `main` only.
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    for file in files {
        let rel = file.strip_prefix(common::root()).unwrap().to_path_buf();
        if rel.starts_with("src/cli") || rel == Path::new("src/main.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.split("//").next().unwrap_or("").contains("crate::cli") {
                broken.push(format!(
                    "{}:{}: names `crate::cli`: the server never calls the command line's code",
                    rel.display(),
                    n + 1
                ));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// Longest a function may be, from its `fn` line to its closing brace: beyond it a function
/// does several things, and a reader cannot hold it at once.
const MAX_FUNCTION_LINES: usize = 120;

/// The functions of `text` longer than the limit, as `(first line, name, lines)`. A function
/// ends at the first line that closes a brace at its own indentation (rustfmt's layout).
fn long_functions(text: &str) -> Vec<(usize, String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut long = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let after_vis = trimmed
            .strip_prefix("pub(crate) ")
            .or_else(|| trimmed.strip_prefix("pub(super) "))
            .or_else(|| trimmed.strip_prefix("pub "))
            .unwrap_or(trimmed);
        let mut rest = after_vis;
        for qualifier in ["const ", "async ", "unsafe "] {
            rest = rest.strip_prefix(qualifier).unwrap_or(rest);
        }
        let Some(signature) = rest.strip_prefix("fn ") else {
            continue;
        };
        if line.trim_end().ends_with(';') {
            continue;
        }
        let name: String = signature
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let end = lines[i + 1..].iter().position(|l| {
            l.len() > indent
                && l[..indent].trim().is_empty()
                && l[indent..].starts_with('}')
                && matches!(
                    l[indent + 1..].chars().next(),
                    None | Some(' ' | ';' | ',' | ')')
                )
        });
        let length = end.map_or(lines.len() - i, |e| e + 2);
        if length > MAX_FUNCTION_LINES {
            long.push((i + 1, name, length));
        }
    }
    long
}

#[test]
fn no_function_is_longer_than_the_limit() {
    let root = common::root();
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    rust_files(&root.join("crates"), &mut files);
    let mut long = Vec::new();
    for file in files {
        // Generated from proto/inference.proto by tools/grpc-gen.
        if file.ends_with("src/grpc/proto.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for (line, name, length) in long_functions(&text) {
            long.push(format!(
                "{}:{line}: fn {name} is {length} lines",
                file.strip_prefix(&root).unwrap().display()
            ));
        }
    }
    assert!(
        long.is_empty(),
        "functions longer than {MAX_FUNCTION_LINES} lines:\n{}",
        long.join("\n")
    );
}
