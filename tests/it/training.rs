//! `cairn train` and `cairn runs` as a user runs them, and the trained version served.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::common::{root, Repo, TestServer};

/// The shipped iris training config, pointed at a temporary repository and runs store.
fn iris_config(repo: &Path, runs: &Path, tweak: &str) -> String {
    let text = std::fs::read_to_string(root().join("configs/train/iris.toml")).unwrap();
    let text = text
        .replace(
            "repository = \"models\"",
            &format!("repository = {:?}", repo.display().to_string()),
        )
        .replace(
            "runs_dir = \"state/runs\"",
            &format!("runs_dir = {:?}", runs.display().to_string()),
        )
        .replace(
            "path = \"models/iris/train.csv\"",
            &format!(
                "path = {:?}",
                root().join("models/iris/train.csv").display().to_string()
            ),
        );
    format!("{text}\n{tweak}")
}

fn cairn(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn versions(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn a_trained_version_is_published_served_and_recorded() {
    let repo = Repo::with(&["iris"]);
    let runs = tempfile::tempdir().unwrap();
    let config = runs.path().join("iris.toml");
    std::fs::write(&config, iris_config(repo.path(), runs.path(), "")).unwrap();
    let out = cairn(&["train", "--config", config.to_str().unwrap(), "--quiet"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("gate      passes"), "{stdout}");
    let v3 = repo.path().join("iris/3");
    for f in ["model.onnx", "baseline.json", "run.json"] {
        assert!(v3.join(f).is_file(), "{f} published");
    }
    let run: Value = serde_json::from_slice(&std::fs::read(v3.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["published_version"], 3);
    assert_eq!(run["gate"]["serving_version"], 2);
    assert!(
        !repo.path().join(".staging").exists()
            || versions(&repo.path().join(".staging")).is_empty()
    );

    // The server serves it, prep inside: raw measurements in, the iris classes out.
    let server = TestServer::start(repo).await;
    let reply = server
        .post_json(
            "/v2/models/iris/versions/3/infer",
            &json!({"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32",
                     "data": [5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3]}]}),
        )
        .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let body = reply.json();
    let label = body["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "label")
        .unwrap();
    assert_eq!(label["data"], json!([0, 2]));
    drop(server);

    // The runs store.
    let list = cairn(&["runs", "--runs-dir", runs.path().to_str().unwrap(), "list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    let id = run["id"].as_str().unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with(id) && l.contains("succeeded")),
        "{text}"
    );
    let show = cairn(&[
        "runs",
        "--runs-dir",
        runs.path().to_str().unwrap(),
        "show",
        id,
    ]);
    let shown: Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(shown["trials"].as_array().unwrap().len(), 4);
    let missing = cairn(&[
        "runs",
        "--runs-dir",
        runs.path().to_str().unwrap(),
        "show",
        "nope",
    ]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no run 'nope'"));
}

#[test]
fn a_refused_or_failed_run_leaves_the_repository_untouched() {
    let repo = Repo::with(&["iris"]);
    let runs = tempfile::tempdir().unwrap();
    let before = versions(&repo.path().join("iris"));
    // Refused: one epoch at a tiny learning rate, no margin.
    let config = runs.path().join("bad.toml");
    let text = iris_config(repo.path(), runs.path(), "")
        .replace("epochs = 200", "epochs = 1")
        .replace("learning_rate = 0.01", "learning_rate = 0.00001")
        .replace("margin = 0.02", "margin = 0.0");
    let text = text.split("[search]").next().unwrap().to_string()
        + "[gate]\nmetric = \"accuracy\"\nmargin = 0.0\n"
        + &text
            .split("[output]")
            .nth(1)
            .map(|t| format!("[output]{t}"))
            .unwrap();
    std::fs::write(&config, text).unwrap();
    let out = cairn(&["train", "--config", config.to_str().unwrap(), "--quiet"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("gate      refused"), "{stdout}");
    assert!(stdout.contains("published nothing"), "{stdout}");
    assert_eq!(versions(&repo.path().join("iris")), before);
    // Failed: the data file is missing.
    let text = iris_config(repo.path(), runs.path(), "").replace("train.csv", "gone.csv");
    std::fs::write(&config, text).unwrap();
    let out = cairn(&["train", "--config", config.to_str().unwrap(), "--quiet"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("gone.csv"));
    assert_eq!(versions(&repo.path().join("iris")), before);
    // A wrong key: the file and the key.
    let text =
        iris_config(repo.path(), runs.path(), "").replace("kind = \"mlp\"", "kind = \"forest\"");
    std::fs::write(&config, text).unwrap();
    let out = cairn(&["train", "--config", config.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}: key 'trainer.kind'", config.display())),
        "{err}"
    );
    let statuses: Vec<String> = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["runs", "--runs-dir", runs.path().to_str().unwrap(), "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .skip(1)
                .map(|l| l.split_whitespace().nth(2).unwrap_or("").to_string())
                .collect()
        })
        .unwrap();
    assert_eq!(statuses, vec!["refused", "failed"]);
}
