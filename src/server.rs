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
use crate::http::{self, AppState, BodyBudget};
use crate::metrics::Metrics;
use crate::repository::Repository;
use crate::rollout::Rollout;
use crate::routing::Router;

/// How often rollout criteria are evaluated and the deployment state saved.
const ROLLOUT_PERIOD: std::time::Duration = std::time::Duration::from_millis(100);

/// A server that is accepting connections.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl RunningServer {
    /// Binds and starts serving at once; models load in the background and readiness turns true
    /// when they are done (`/v2/health/ready`).
    pub async fn start(config: ServerConfig) -> std::io::Result<RunningServer> {
        let listener = TcpListener::bind(&config.listen).await?;
        let addr = listener.local_addr()?;
        tracing::info!("listening on http://{addr}");
        let metrics = Metrics::new();
        let router = Arc::new(Router::new());
        let repository = Arc::new(Repository::new(
            config.model_repository.clone(),
            Arc::clone(&router),
            metrics.clone(),
            config.load.clone(),
            config.state_dir.join("uploads"),
        ));
        let body_budget =
            BodyBudget::new(config.connections.max_buffered_body_bytes, metrics.clone());
        let rollout = Arc::new(Rollout::new(
            Arc::clone(&router),
            metrics.clone(),
            config.state_dir.clone(),
        ));
        let state = Arc::new(AppState {
            config,
            router,
            repository,
            rollout,
            metrics,
            body_budget,
            ready: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
        });
        let (stop, mut stopped) = watch::channel(false);
        let serve_state = Arc::clone(&state);
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            http::serve(listener, serve_state, shutdown).await;
        });
        let load_state = Arc::clone(&state);
        tokio::spawn(async move {
            let cleaner = Arc::clone(&load_state.repository);
            let _ = tokio::task::spawn_blocking(move || cleaner.clean_uploads()).await;
            if let Err(e) = load_state.repository.load_all().await {
                tracing::error!(error = %e, "cannot load the model repository");
            }
            let restore = Arc::clone(&load_state.rollout);
            let _ = tokio::task::spawn_blocking(move || restore.restore()).await;
            load_state.ready.store(true, Ordering::Release);
            let table = load_state.router.snapshot();
            let ready = table.models.values().filter(|m| m.is_ready()).count();
            tracing::info!(
                models = table.models.len(),
                ready,
                "repository loaded; server ready"
            );
            tokio::spawn(Arc::clone(&load_state.rollout).run(ROLLOUT_PERIOD));
            if let Some(period) = load_state.config.repository_poll_interval {
                tokio::spawn(Arc::clone(&load_state.repository).poll(period));
            }
        });
        Ok(RunningServer {
            addr,
            state,
            stop,
            task,
        })
    }

    /// Waits until the startup load has finished.
    pub async fn wait_ready(&self) {
        while !self.state.ready.load(Ordering::Acquire) {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Stops accepting, lets in-flight requests finish (bounded by the grace period), returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Serves until the task ends (after `shutdown` was asked for elsewhere).
    pub async fn join(self) {
        let _ = self.task.await;
    }

    /// A handle that asks the server to shut down.
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }
}
