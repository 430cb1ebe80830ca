//! An object-store repository through the real server, on the local file system store
//! (`file://`): served from its mirror under the state directory, a half-uploaded version never
//! loaded however many polls see it, loaded once its model file arrives, unloaded once deleted;
//! a store that cannot be listed refuses the start. The same against an S3 server, and replicas
//! sharing their deployments, run in `tests/compat/check_object_store.py` (moto).

use std::time::Duration;

use cairn::config::{MonitorSettings, TrainingSettings};
use cairn::server::RunningServer;

use crate::common::{Repo, TestServer};

const POLL: Duration = Duration::from_millis(200);

/// `store` served as `file://<store>`, with the state (and so the mirror) in `state`.
async fn serve_from(store: Repo, state: &std::path::Path) -> TestServer {
    let url = format!("file://{}", store.path().display());
    let state = state.to_path_buf();
    TestServer::start_with(store, move |c| {
        c.remote_repository = Some(url);
        c.model_repository = state.join("repository");
        c.monitor = MonitorSettings::defaults(&state);
        c.training = TrainingSettings::defaults(&state);
        c.state_dir = state;
        c.repository_poll_interval = Some(POLL);
    })
    .await
}

async fn ready(s: &TestServer, version: u64) -> bool {
    s.get(&format!("/v2/models/iris/versions/{version}/ready"))
        .await
        .status
        == 200
}

async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_counts_once_its_model_file_is_in_the_store() {
    let store = Repo::with(&[]);
    let iris = crate::common::root().join("models/iris");
    std::fs::create_dir_all(store.path().join("iris/1")).unwrap();
    std::fs::copy(
        iris.join("config.toml"),
        store.path().join("iris/config.toml"),
    )
    .unwrap();
    std::fs::copy(
        iris.join("1/model.onnx"),
        store.path().join("iris/1/model.onnx"),
    )
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    let s = serve_from(store, state.path()).await;
    let mirror = state.path().join("repository/iris");
    assert!(ready(&s, 1).await);
    assert!(
        mirror.join("1/model.onnx").is_file(),
        "served from the mirror"
    );
    let sample = std::fs::read(iris.join("1/sample.json")).unwrap();
    assert_eq!(
        s.post("/v2/models/iris/infer", sample.clone()).await.status,
        200
    );

    // Version 2 without its model file: several polls later it is neither loaded nor mirrored.
    s.repo.write(
        "iris/2/baseline.json",
        &std::fs::read(iris.join("2/baseline.json")).unwrap(),
    );
    let syncs = r#"cairn_repository_syncs_total{result="ok"}"#;
    let before = s.metric(syncs).await;
    wait_until("the repository is polled", async || {
        s.metric(syncs).await >= before + 4.0
    })
    .await;
    assert!(
        !ready(&s, 2).await,
        "a version without its model file was loaded"
    );
    assert!(
        !mirror.join("2").exists(),
        "a version without its model file was mirrored"
    );

    // Its model file arrives: loaded, with the file that came first.
    s.repo.write(
        "iris/2/model.onnx",
        &std::fs::read(iris.join("2/model.onnx")).unwrap(),
    );
    wait_until("version 2 is loaded once complete", async || {
        ready(&s, 2).await
    })
    .await;
    assert!(mirror.join("2/baseline.json").is_file());
    let reply = s.post("/v2/models/iris/versions/2/infer", sample).await;
    assert_eq!(reply.status, 200);

    // Deleted from the store: unloaded, and gone from the mirror.
    std::fs::remove_dir_all(s.repo.path().join("iris/2")).unwrap();
    wait_until("version 2 is unloaded once deleted", async || {
        !ready(&s, 2).await
    })
    .await;
    wait_until("version 2 leaves the mirror", async || {
        !mirror.join("2").exists()
    })
    .await;
    assert!(ready(&s, 1).await);
    assert_eq!(
        s.metric(r#"cairn_repository_syncs_total{result="error"}"#)
            .await,
        0.0
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_be_listed_refuses_the_start() {
    let state = tempfile::tempdir().unwrap();
    let missing = state.path().join("no-such-store");
    let url = format!("file://{}", missing.display());
    let mut c = cairn::config::ServerConfig::for_repository(&state.path().join("repository"));
    c.remote_repository = Some(url.clone());
    c.state_dir = state.path().to_path_buf();
    let err = match RunningServer::start(c).await {
        Ok(_) => panic!("started on a store that does not exist"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&url), "{err}");
}
