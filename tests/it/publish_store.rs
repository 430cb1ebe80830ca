//! Publishing to an object-store repository (`file://` here; S3 in
//! `tests/compat/check_object_store.py`): a training job's version goes to the store, model
//! file last, and every server polling the store loads it and lets it enter as a version trained
//! by a server; `cairn train` runs racing each other get different numbers; a job whose replica
//! lost the model's lease publishes nothing.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cairn::config::{MonitorSettings, TrainingSettings};
use cairn::lease::{Held, Leases};
use cairn::training::jobs::{JobState, Jobs, Narrow, Trigger};
use object_store::memory::InMemory;
use object_store::path::Path as StorePath;
use object_store::ObjectStore;
use serde_json::{json, Value};

use crate::common::{root, Repo, TestServer};

const POLL: Duration = Duration::from_millis(200);

/// The shipped iris training config, writing its runs to `runs` and publishing to `repository`
/// (a server's job replaces both with its own).
fn iris_config(repository: &str, runs: &Path) -> String {
    std::fs::read_to_string(root().join("configs/train/iris.toml"))
        .unwrap()
        .replace(
            "repository = \"models\"",
            &format!("repository = {repository:?}"),
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
        )
}

/// A store holding iris (versions 1 and 2), judged by its feedback: a version a server trained
/// enters as a shadow judged on pairs.
fn iris_store() -> Repo {
    let store = Repo::with(&["iris"]);
    let config = std::fs::read_to_string(store.path().join("iris/config.toml")).unwrap();
    store.write(
        "iris/config.toml",
        format!("{config}\n[rollout]\nmax_accuracy_drop = 0.05\n").as_bytes(),
    );
    store
}

/// A server of the store at `url`, its state (and mirror) in `state`, training configs in
/// `configs`.
async fn replica(url: &str, state: &Path, configs: &Path) -> TestServer {
    let (url, state, configs) = (url.to_string(), state.to_path_buf(), configs.to_path_buf());
    TestServer::start_with(Repo::with(&[]), move |c| {
        c.remote_repository = Some(url);
        c.model_repository = state.join("repository");
        c.monitor = MonitorSettings::defaults(&state);
        c.training = TrainingSettings::defaults(&state);
        c.training.config_dir = configs;
        c.state_dir = state;
        c.repository_poll_interval = Some(POLL);
    })
    .await
}

async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn ready(s: &TestServer, version: u64) -> bool {
    s.get(&format!("/v2/models/iris/versions/{version}/ready"))
        .await
        .status
        == 200
}

fn files_of(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_version_goes_through_the_store_to_every_replica_as_trained() {
    let store = iris_store();
    let url = format!("file://{}", store.path().display());
    let (one_state, two_state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let configs = tempfile::tempdir().unwrap();
    std::fs::write(
        configs.path().join("iris.toml"),
        iris_config("ignored", Path::new("ignored")),
    )
    .unwrap();
    let one = replica(&url, one_state.path(), configs.path()).await;
    let two = replica(&url, two_state.path(), configs.path()).await;

    let reply = one.post("/v2/models/iris/train", "").await;
    assert_eq!(
        reply.status,
        202,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let id = reply.json()["id"].as_str().unwrap().to_string();
    let mut job = Value::Null;
    wait_until("the job finishes", async || {
        job = one.get(&format!("/v2/training/jobs/{id}")).await.json();
        job["state"] != "running"
    })
    .await;
    assert_eq!(job["state"], "published", "{job}");
    assert_eq!(job["version"], 3, "{job}");

    // In the store: claimed, the job's mark and record, the model file committed last.
    let v3 = store.path().join("iris/3");
    assert_eq!(
        files_of(&v3),
        [
            ".claim.json",
            "baseline.json",
            "model.onnx",
            "run.json",
            "trained.json"
        ]
    );
    let claim: Value =
        serde_json::from_slice(&std::fs::read(v3.join(".claim.json")).unwrap()).unwrap();
    assert_eq!(claim["run"], job["run"], "{claim}");
    let run: Value = serde_json::from_slice(&std::fs::read(v3.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["published_version"], 3);
    let mark: Value =
        serde_json::from_slice(&std::fs::read(v3.join("trained.json")).unwrap()).unwrap();
    assert_eq!(
        (&mark["job"], &mark["trigger"]),
        (&json!(id), &json!("manual"))
    );
    assert!(
        !one_state.path().join("repository/.staging").exists()
            || files_of(&one_state.path().join("repository/.staging")).is_empty(),
        "nothing left staged"
    );

    // Both replicas load it from the store and, each on its own (no shared state here), put
    // it on trial as a version a server trained: a paired shadow, version 2 still answering.
    for (name, s) in [("one", &one), ("two", &two)] {
        wait_until(&format!("{name} loads version 3"), async || {
            ready(s, 3).await
        })
        .await;
        let d = s.get("/v2/models/iris/deployment").await.json();
        assert_eq!(d["stable"], 2, "{name}: {d}");
        let c = &d["candidate"];
        assert_eq!(
            (&c["version"], &c["mode"], &c["criteria"]["accuracy_test"]),
            (&json!(3), &json!("shadow"), &json!("sequential")),
            "{name}: {d}"
        );
        let last = d["history"].as_array().unwrap().last().unwrap().clone();
        assert!(
            last["reason"].as_str().unwrap().contains("trained here"),
            "{name}: {last}"
        );
    }
    one.shutdown().await;
    two.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_cairn_train_runs_publish_under_different_numbers() {
    let store = iris_store();
    let url = format!("file://{}", store.path().display());
    let work = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let server = replica(&url, state.path(), work.path()).await;
    let mut runs = Vec::new();
    for i in 0..2 {
        let config = work.path().join(format!("iris-{i}.toml"));
        let runs_dir = work.path().join(format!("runs-{i}"));
        std::fs::write(&config, iris_config(&url, &runs_dir)).unwrap();
        runs.push(
            std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
                .args(["train", "--quiet", "--config"])
                .arg(&config)
                .env("NO_COLOR", "1")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
    }
    let mut published = Vec::new();
    for run in runs {
        let out = tokio::task::spawn_blocking(move || run.wait_with_output().unwrap())
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout
            .lines()
            .find(|l| l.starts_with("published "))
            .unwrap_or_else(|| panic!("{stdout}"));
        let version: u64 = line.rsplit('/').next().unwrap().parse().unwrap();
        assert!(line.contains(&format!("{url}/iris/")), "{line}");
        published.push(version);
    }
    published.sort_unstable();
    assert_eq!(published, [3, 4], "one number each");
    for v in [3, 4] {
        let dir = store.path().join(format!("iris/{v}"));
        assert!(dir.join("model.onnx").is_file(), "version {v} complete");
        assert!(
            !dir.join("trained.json").exists(),
            "not trained by a server"
        );
        assert!(!dir.join(".pending.model.onnx").exists());
        let run: Value =
            serde_json::from_slice(&std::fs::read(dir.join("run.json")).unwrap()).unwrap();
        assert_eq!(run["published_version"], v);
        // Gated against the store's serving version, fetched for it.
        assert_eq!(run["gate"]["serving_version"], 2, "{}", run["gate"]);
    }
    wait_until("the server loads both", async || {
        ready(&server, 3).await && ready(&server, 4).await
    })
    .await;
    server.shutdown().await;
}

/// A job started while its replica held the model's lease, the lease then taken over by another
/// replica: the publish refuses itself, and nothing reaches the store or the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_replica_lost_the_lease_publishes_nothing_to_the_store() {
    let store = iris_store();
    let url = format!("file://{}", store.path().display());
    let state = tempfile::tempdir().unwrap();
    let configs = tempfile::tempdir().unwrap();
    std::fs::write(
        configs.path().join("iris.toml"),
        iris_config("ignored", Path::new("ignored")),
    )
    .unwrap();
    let server = replica(&url, state.path(), configs.path()).await;
    lose_the_lease_while_training(server, store.path()).await;
}

/// The same in a local repository: refused before the rename into place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_replica_lost_the_lease_publishes_nothing_locally() {
    let configs = tempfile::tempdir().unwrap();
    std::fs::write(
        configs.path().join("iris.toml"),
        iris_config("ignored", Path::new("ignored")),
    )
    .unwrap();
    let dir = configs.path().to_path_buf();
    let server = TestServer::start_with(iris_store(), move |c| c.training.config_dir = dir).await;
    let repository = server.repo.path().to_path_buf();
    lose_the_lease_while_training(server, &repository).await;
}

/// Starts a job of iris through `Jobs` whose replica ("one") holds the lease in a store shared
/// with another replica ("two"), which then takes the lease over: the job must fail, publishing
/// nothing into `repository` (the store, or the local repository).
async fn lose_the_lease_while_training(server: TestServer, repository: &Path) {
    let app = &server.server.as_ref().unwrap().state;
    // The leases the replicas share (an in-memory store: conditional puts, as S3 has).
    let shared: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let lease = |holder: &str| {
        Arc::new(Leases::with_store(
            Arc::clone(&shared),
            StorePath::from("state"),
            "memory:///state",
            holder,
            cairn::lease::TTL,
        ))
    };
    let other = lease("two");
    let jobs = Jobs::new(
        app.config.training.clone(),
        app.config.state_dir.join("predictions"),
        app.config.model_repository.clone(),
        Arc::clone(&app.repository),
        Arc::clone(&app.router),
        Arc::new(cairn::rollout::Rules::new(app.metrics.clone())),
        Some(lease("one")),
        app.metrics.clone(),
        tokio::runtime::Handle::current(),
    );
    let starter = Arc::clone(&jobs);
    let job = tokio::task::spawn_blocking(move || {
        starter.start("iris", Trigger::Manual, "test", &Narrow::default())
    })
    .await
    .unwrap()
    .unwrap();
    // The other replica takes the lease over (as if this one had stopped renewing it).
    let later = cairn::lease::now_ms() + 10 * cairn::lease::TTL.as_millis() as u64;
    assert!(matches!(
        other.acquire("iris", later).await.unwrap(),
        Held::Here(r) if r.generation == 2
    ));
    let mut view = jobs.get(&job.id).unwrap();
    wait_until("the job finishes", async || {
        view = jobs.get(&job.id).unwrap();
        view.state != JobState::Running
    })
    .await;
    assert_eq!(view.state, JobState::Failed, "{view:?}");
    let error = view.error.clone().unwrap_or_default();
    assert!(
        error.contains("not published") && error.contains("held by 'two' (generation 2)"),
        "{error}"
    );
    assert!(
        !repository.join("iris/3").exists(),
        "nothing claimed, nothing placed"
    );
    let staging = app.config.model_repository.join(".staging");
    assert!(files_of(&staging).is_empty(), "nothing left staged");
    assert!(!ready(&server, 3).await);
    let runs = std::fs::read_dir(&app.config.training.runs_dir)
        .unwrap()
        .count();
    assert_eq!(runs, 1, "the failed run is recorded");
    jobs.shutdown(Duration::from_secs(5));
    server.shutdown().await;
}
