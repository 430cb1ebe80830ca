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

/// Polls a job until it leaves `running`.
async fn finished(server: &TestServer, id: &str) -> Value {
    server_job(server, id, &[]).await
}

#[tokio::test]
async fn a_job_over_http_trains_gates_and_publishes_one_per_model() {
    let repo = Repo::with(&["iris"]);
    repo.add_as("iris", "flowers");
    // iris is judged by its feedback: a version trained here enters as a paired shadow.
    let config = std::fs::read_to_string(repo.path().join("iris/config.toml")).unwrap();
    repo.write(
        "iris/config.toml",
        format!("{config}\n[rollout]\nmax_accuracy_drop = 0.05\n").as_bytes(),
    );
    let configs = tempfile::tempdir().unwrap();
    let runs = tempfile::tempdir().unwrap();
    std::fs::write(
        configs.path().join("iris.toml"),
        iris_config(Path::new("ignored"), runs.path(), ""),
    )
    .unwrap();
    std::fs::write(
        configs.path().join("flowers.toml"),
        iris_config(Path::new("ignored"), runs.path(), "")
            .replace("model = \"iris\"", "model = \"flowers\""),
    )
    .unwrap();
    let dir = configs.path().to_path_buf();
    let server = TestServer::start_with(repo, |c| {
        c.training.config_dir = dir;
        c.admin_token = Some("sesame".into());
    })
    .await;
    let auth = |path: &str| (path.to_string(), vec![("authorization", "Bearer sesame")]);
    // The admin token guards it.
    let reply = server.post("/v2/models/iris/train", "").await;
    assert_eq!(reply.status, 401, "{}", reply.error());
    let (path, headers) = auth("/v2/models/iris/train");
    let reply = server
        .request(http::Method::POST, &path, &headers, "")
        .await;
    assert_eq!(
        reply.status,
        202,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let job = reply.json();
    assert_eq!(job["state"], "running");
    assert_eq!(job["trigger"], "manual");
    let id = job["id"].as_str().unwrap().to_string();
    // One per model; and one in all (max_training_jobs = 1 by default).
    let again = server
        .request(http::Method::POST, &path, &headers, "")
        .await;
    assert_eq!(again.status, 409, "{}", again.error());
    let other = server
        .request(http::Method::POST, "/v2/models/flowers/train", &headers, "")
        .await;
    assert_eq!(other.status, 503, "{}", other.error());
    let unknown = server
        .request(http::Method::POST, "/v2/models/nope/train", &headers, "")
        .await;
    assert_eq!(unknown.status, 404, "{}", unknown.error());

    let job = server_job(&server, &id, &headers).await;
    assert_eq!(job["state"], "published", "{job}");
    assert_eq!(job["version"], 3);
    assert_eq!(job["gate"]["passed"], true);
    assert!(job["test"]["accuracy"].as_f64().unwrap() > 0.8, "{job}");
    assert_eq!(job["progress"]["trials_done"], 4);
    // Published through the repository: loaded and ready, and on trial as a shadow judged on
    // pairs of answers (`[retrain] trial = "paired"`, the default), version 2 still answering.
    let ready = server.get("/v2/models/iris/versions/3/ready").await;
    assert_eq!(ready.status, 200);
    let d = server
        .request(
            http::Method::GET,
            "/v2/models/iris/deployment",
            &headers,
            "",
        )
        .await
        .json();
    assert_eq!(d["stable"], 2, "{d}");
    let candidate = &d["candidate"];
    assert_eq!(
        (&candidate["version"], &candidate["mode"]),
        (&json!(3), &json!("shadow")),
        "{d}"
    );
    assert_eq!(candidate["criteria"]["accuracy_test"], "sequential", "{d}");
    assert_eq!(candidate["criteria"]["min_agreement"], 0.0, "{d}");
    let last = d["history"].as_array().unwrap().last().unwrap();
    assert!(
        last["reason"].as_str().unwrap().contains("trained here"),
        "{last}"
    );
    let list = server
        .request(http::Method::GET, "/v2/training/jobs", &headers, "")
        .await
        .json();
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1);
    assert!(server.metric("cairn_training_jobs_total{model=\"iris\",outcome=\"published\",trigger=\"manual\"}").await == 1.0);
}

async fn server_job(server: &TestServer, id: &str, headers: &[(&str, &str)]) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let reply = server
            .request(
                http::Method::GET,
                &format!("/v2/training/jobs/{id}"),
                headers,
                "",
            )
            .await;
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        let job = reply.json();
        if job["state"] != "running" {
            return job;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job {id} never finished: {job}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_failed_job_is_reported_and_leaves_the_repository_untouched() {
    let repo = Repo::with(&["iris"]);
    let configs = tempfile::tempdir().unwrap();
    let runs = tempfile::tempdir().unwrap();
    let before = versions(&repo.path().join("iris"));
    let root = repo.path().to_path_buf();
    // A run the previous process left running: reported failed after the restart.
    let interrupted = root.join(".cairn/runs/20261201-101010.000-iris-0001");
    std::fs::create_dir_all(&interrupted).unwrap();
    std::fs::write(
        interrupted.join("run.json"),
        r#"{"id": "20261201-101010.000-iris-0001", "model": "iris", "status": "running",
            "config_file": "configs/train/iris.toml", "config": {}, "seed": 1,
            "started": "2026-12-01T10:10:10Z"}"#,
    )
    .unwrap();
    let dir = configs.path().to_path_buf();
    let server = TestServer::start_with(repo, |c| c.training.config_dir = dir).await;
    let old = finished(&server, "20261201-101010.000-iris-0001").await;
    assert_eq!(old["state"], "failed");
    assert!(
        old["error"]
            .as_str()
            .unwrap()
            .contains("stopped during the run"),
        "{old}"
    );
    let record: Value =
        serde_json::from_slice(&std::fs::read(interrupted.join("run.json")).unwrap()).unwrap();
    assert_eq!(record["status"], "failed");
    // No config: 400 naming the file.
    let reply = server.post("/v2/models/iris/train", "").await;
    assert_eq!(reply.status, 400);
    assert!(reply.error().contains("iris.toml"), "{}", reply.error());
    // A config whose data is gone: the job starts, fails, and says why.
    std::fs::write(
        configs.path().join("iris.toml"),
        iris_config(Path::new("ignored"), runs.path(), "").replace("train.csv", "gone.csv"),
    )
    .unwrap();
    let reply = server.post("/v2/models/iris/train", "").await;
    assert_eq!(
        reply.status,
        202,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let id = reply.json()["id"].as_str().unwrap().to_string();
    let job = finished(&server, &id).await;
    assert_eq!(job["state"], "failed");
    assert!(job["error"].as_str().unwrap().contains("gone.csv"), "{job}");
    assert_eq!(versions(&root.join("iris")), before);
    let staging = root.join(".staging");
    assert!(!staging.exists() || versions(&staging).is_empty());
    assert_eq!(
        server.get("/v2/models/iris/versions/3/ready").await.status,
        404
    );
    // A wrong key: 400 naming the file and the key, and no job.
    std::fs::write(
        configs.path().join("iris.toml"),
        iris_config(Path::new("ignored"), runs.path(), "").replace("epochs = 200", "epochs = 0"),
    )
    .unwrap();
    let reply = server.post("/v2/models/iris/train", "").await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.error().contains("key 'trainer.epochs'"),
        "{}",
        reply.error()
    );
}
