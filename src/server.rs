//! Wiring: binds the listener, builds the shared state, loads the repository and serves until
//! told to stop. Used by `main` and by the integration tests, which run the real server in
//! process on a free port.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::ServerConfig;
use crate::http;
use crate::metrics::Metrics;
use crate::monitoring::MonitorHub;
use crate::offload::Offload;
use crate::repository::remote::RemoteRepository;
use crate::repository::Repository;
use crate::rollout::{Rollout, Rules};
use crate::routing::{DeploymentRules, Router};
use crate::service::{AppState, BodyBudget};
use crate::tls::Tls;

/// How often rollout criteria are evaluated and the deployment state saved.
const ROLLOUT_PERIOD: std::time::Duration = std::time::Duration::from_millis(100);

/// How often the shared deployment state is looked at when the repository is not polled.
const SHARED_STATE_PERIOD: std::time::Duration = std::time::Duration::from_secs(10);

/// A server that is accepting connections.
pub struct RunningServer {
    pub addr: SocketAddr,
    /// The gRPC service's address; `None` when `grpc_listen` is off.
    pub grpc_addr: Option<SocketAddr>,
    pub state: Arc<AppState>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// The startup load, then the rollout evaluator and the repository poller; all end on stop.
    background: JoinHandle<()>,
    /// The log's uploads to `log_store`, from the start (what an earlier process left goes
    /// first) until stop; the last pass runs after the writers have sealed everything.
    uploads: Option<JoinHandle<()>>,
}

/// Everything the handlers share, built from the configuration: metrics, routing, the monitor
/// hub, the repository (on its object store when there is one), rollout (with the replicas'
/// shared state when configured), training and the retraining policy.
fn shared_state(
    config: ServerConfig,
    remote: Option<RemoteRepository>,
) -> std::io::Result<Arc<AppState>> {
    let metrics = Metrics::new();
    let rules = Arc::new(Rules::new(metrics.clone()));
    let offload = Offload::with_default_slots();
    let router = Arc::new(Router::new(
        Arc::clone(&rules) as Arc<dyn DeploymentRules>,
        offload.clone(),
    ));
    let mut monitors = MonitorHub::new(config.monitor.clone(), metrics.clone());
    if let Some(url) = &config.monitor.log_store {
        let uploader = crate::monitoring::log_store::Uploader::open(
            url,
            &config.replica_id,
            &config.monitor,
            metrics.clone(),
        )
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        monitors = monitors.with_uploader(Arc::new(uploader));
    }
    let monitors = Arc::new(monitors);
    let mut repository = Repository::new(
        config.model_repository.clone(),
        Arc::clone(&router),
        metrics.clone(),
        config.load.clone(),
        config.state_dir.join("uploads"),
        Arc::clone(&monitors),
    );
    if let (Some(url), Some(remote)) = (&config.remote_repository, remote) {
        repository = repository.with_remote(Arc::new(remote));
        tracing::info!(url = %url, mirror = %config.model_repository.display(), "model repository in an object store");
    }
    let repository = Arc::new(repository);
    let body_budget = BodyBudget::new(config.connections.max_buffered_body_bytes, metrics.clone());
    let mut rollout = Rollout::new(
        Arc::clone(&router),
        Arc::clone(&rules),
        metrics.clone(),
        config.state_dir.clone(),
    );
    if let Some(url) = &config.deployment_state {
        let shared = crate::rollout::shared::SharedState::open(url)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let trials = crate::rollout::trials::SharedTrials::open(url, &config.replica_id)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        rollout = rollout.with_shared(shared).with_shared_trials(trials);
    }
    let rollout = Arc::new(rollout);
    // With replicas, one of them at a time retrains a model: the holder of its lease.
    let leases = match &config.deployment_state {
        Some(url) => Some(Arc::new(
            crate::lease::Leases::open(url, &config.replica_id)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
        )),
        None => None,
    };
    let mut training_settings = config.training.clone();
    training_settings.log_store = config
        .monitor
        .log_store
        .clone()
        .map(|url| (url, config.replica_id.clone()));
    let training = crate::training::jobs::Jobs::new(
        training_settings,
        config.monitor.dir.clone(),
        config.model_repository.clone(),
        Arc::clone(&repository),
        Arc::clone(&router),
        Arc::clone(&rules),
        leases.clone(),
        metrics.clone(),
        tokio::runtime::Handle::current(),
    );
    let retrainer = crate::training::retrain::Retrainer::new(
        Arc::clone(&router),
        Arc::clone(&monitors),
        Arc::clone(&training),
        metrics.clone(),
        leases,
    );
    // With replicas, a label may reach another replica than the one that answered: relayed.
    let relay = match &config.deployment_state {
        Some(url) => Some(Arc::new(
            crate::monitoring::relay::Relay::open(url, &config.replica_id, metrics.clone())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
        )),
        None => None,
    };
    Ok(Arc::new(AppState {
        relay,
        config,
        router,
        repository,
        rollout,
        metrics,
        body_budget,
        offload,
        monitors,
        training,
        retrainer,
        ready: AtomicBool::new(false),
        stopping: AtomicBool::new(false),
    }))
}

impl RunningServer {
    /// Binds and starts serving at once; models load in the background and readiness turns true
    /// when they are done (`/v2/health/ready`).
    pub async fn start(config: ServerConfig) -> std::io::Result<RunningServer> {
        // TLS is built before anything binds: a wrong file fails the start, naming it.
        let tls_for = |protocol: crate::listener::Protocol| -> std::io::Result<Option<Arc<Tls>>> {
            config
                .tls
                .clone()
                .map(|files| Tls::load(files, protocol.alpn()))
                .transpose()
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))
        };
        let http_tls = tls_for(crate::listener::Protocol::Http)?;
        // An object store that cannot be listed fails the start, saying why and what to set.
        let remote = match &config.remote_repository {
            None => None,
            Some(url) => {
                let invalid = |e: crate::repository::remote::RemoteError| {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
                };
                let remote = RemoteRepository::open(url, config.model_repository.clone())
                    .map_err(invalid)?;
                remote.check().await.map_err(invalid)?;
                Some(remote)
            }
        };
        let grpc_tls = tls_for(crate::listener::Protocol::Grpc)?;
        let listener = TcpListener::bind(&config.listen).await?;
        let addr = listener.local_addr()?;
        let scheme = if http_tls.is_some() { "https" } else { "http" };
        tracing::info!("listening on {scheme}://{addr}");
        let grpc_listener = match &config.grpc_listen {
            None => None,
            Some(grpc) => {
                let listener = TcpListener::bind(grpc)
                    .await
                    .map_err(|e| std::io::Error::new(e.kind(), format!("gRPC on {grpc}: {e}")))?;
                let tls = if grpc_tls.is_some() { " (TLS)" } else { "" };
                tracing::info!("gRPC listening on {}{tls}", listener.local_addr()?);
                Some(listener)
            }
        };
        let grpc_addr = grpc_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?;
        let state = shared_state(config, remote)?;
        let (stop, stopped) = watch::channel(false);
        let serve_state = Arc::clone(&state);
        let mut serve_stop = stopped.clone();
        let watched: Vec<Arc<Tls>> = http_tls.iter().chain(&grpc_tls).cloned().collect();
        tokio::spawn(crate::tls::watch(
            watched,
            state.metrics.clone(),
            stopped.clone(),
        ));
        let grpc_task = grpc_listener.map(|listener| {
            let state = Arc::clone(&state);
            let mut stop = stopped.clone();
            tokio::spawn(async move {
                let shutdown = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                crate::grpc::serve(listener, state, shutdown, grpc_tls).await;
            })
        });
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = serve_stop.wait_for(|s| *s).await;
            };
            let http = http::serve(listener, serve_state, shutdown, http_tls);
            match grpc_task {
                // Both fronts stop together: whichever the stop reaches first, the server is
                // done only when both have drained.
                Some(grpc) => {
                    let (_, _) = tokio::join!(http, grpc);
                }
                None => http.await,
            }
        });
        let uploads = state
            .monitors
            .uploader()
            .map(|u| tokio::spawn(Arc::clone(u).run(stopped.clone())));
        let background = tokio::spawn(background(Arc::clone(&state), stopped));
        Ok(RunningServer {
            addr,
            grpc_addr,
            state,
            stop,
            task,
            background,
            uploads,
        })
    }

    /// Waits until the startup load has finished.
    pub async fn wait_ready(&self) {
        while !self.state.ready.load(Ordering::Acquire) {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Stops accepting, lets in-flight requests finish (bounded by the grace period), stops the
    /// evaluator and the poller, returns. Once the returned future is done and the server is
    /// dropped, nothing holds the loaded versions: their engine threads exit and their memory
    /// is freed.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.join().await;
    }

    /// Serves until the server stops (after `shutdown` was asked for elsewhere), then waits for
    /// the background tasks.
    pub async fn join(self) {
        let _ = self.task.await;
        let _ = self.stop.send(true);
        // The log first: on a pod whose disk goes with it, what is not in the store when the
        // grace period ends is lost, and a training job or a background step taking its time
        // must not spend the log's share of it.
        let wait = self.state.config.shutdown_timeout;
        let deadline = tokio::time::Instant::now() + wait;
        // The log writers seal their segments: a clean shutdown flushes every record.
        let monitors = Arc::clone(&self.state.monitors);
        let _ = tokio::task::spawn_blocking(move || monitors.shutdown()).await;
        // Then what they sealed goes to the log store; what does not make it stays on disk for
        // the next start.
        if let Some(uploads) = self.uploads {
            let _ = uploads.await;
        }
        if let Some(uploader) = self.state.monitors.uploader() {
            uploader
                .finish(deadline.saturating_duration_since(tokio::time::Instant::now()))
                .await;
        }
        // Running training jobs stop at their next epoch and publish nothing; the background
        // loops end at their next look (a kubelet's kill may come first: the log is safe).
        let training = Arc::clone(&self.state.training);
        let _ = tokio::task::spawn_blocking(move || training.shutdown(wait)).await;
        let _ = self.background.await;
    }

    /// A handle that asks the server to shut down.
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }
}

/// Loads the repository and restores the deployments (readiness turns true after), then runs
/// the rollout evaluator and the repository poller until the server stops. A stop during the
/// startup load abandons it.
async fn background(state: Arc<AppState>, mut stopped: watch::Receiver<bool>) {
    let startup = async {
        let cleaner = Arc::clone(&state.repository);
        let _ = tokio::task::spawn_blocking(move || cleaner.clean_stale()).await;
        if let Err(e) = state.repository.load_all().await {
            tracing::error!(error = %e, "cannot load the model repository");
        }
        let restore = Arc::clone(&state.rollout);
        let _ = tokio::task::spawn_blocking(move || restore.restore()).await;
        let training = Arc::clone(&state.training);
        let _ = tokio::task::spawn_blocking(move || training.recover()).await;
    };
    tokio::select! {
        () = startup => {}
        _ = stopped.wait_for(|s| *s) => return,
    }
    state.ready.store(true, Ordering::Release);
    let table = state.router.snapshot();
    let ready = table.models.values().filter(|m| m.is_ready()).count();
    tracing::info!(
        models = table.models.len(),
        ready,
        "repository loaded; server ready"
    );
    drop(table);
    let evaluator = Arc::clone(&state.rollout).run(ROLLOUT_PERIOD, stopped.clone());
    let poller = async {
        if let Some(period) = state.config.repository_poll_interval {
            Arc::clone(&state.repository)
                .poll(period, stopped.clone())
                .await;
        }
    };
    let retrainer = Arc::clone(&state.retrainer).run(stopped.clone());
    let shared = Arc::clone(&state.rollout).follow_shared(
        state
            .config
            .repository_poll_interval
            .unwrap_or(SHARED_STATE_PERIOD),
        stopped.clone(),
    );
    let gpus = crate::gpu_telemetry::run(
        state.metrics.clone(),
        crate::gpu_telemetry::PERIOD,
        stopped.clone(),
    );
    let relay = async {
        if let Some(relay) = &state.relay {
            Arc::clone(relay)
                .run(
                    Arc::clone(&state.monitors),
                    Arc::clone(&state.router),
                    stopped.clone(),
                )
                .await;
        }
    };
    tokio::join!(evaluator, poller, retrainer, shared, gpus, relay);
}
