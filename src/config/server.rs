//! Server settings. One struct, [`ServerSettings`], is both the `configs/server.toml` schema and
//! the `serve` subcommand's flags (each with an environment variable), so the three sources can
//! never drift apart. Precedence: flag, then environment, then file, then the default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

/// Every setting, each optional so that sources can be layered.
#[derive(Clone, Debug, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to listen on, `host:port`. Port 0 picks a free port; the chosen address is printed
    /// in the first log line. [default: 0.0.0.0:8000]
    #[arg(long, env = "CAIRN_LISTEN", value_name = "ADDR:PORT")]
    pub listen: Option<String>,

    /// Address of the gRPC V2 service (`inference.GRPCInferenceService`), `host:port`, or `off`.
    /// Port 0 picks a free port, printed in a log line that names gRPC.
    /// [default: the `listen` host on port 8001; port 0 when `listen` has port 0]
    #[arg(long, env = "CAIRN_GRPC_LISTEN", value_name = "ADDR:PORT|off")]
    pub grpc_listen: Option<String>,

    /// Object-store prefix (`s3://bucket/state`) where replicas share the deployments: a change
    /// made through any replica is written there (a conditional put) and applied by the others
    /// within `repository_poll_interval_s` (10 s when unset). Unset, each server keeps its own.
    #[arg(long, env = "CAIRN_DEPLOYMENT_STATE", value_name = "URL")]
    pub deployment_state: Option<String>,

    /// This replica's name among those sharing `deployment_state`: it holds the per-model
    /// retraining lease under it, and the others show it; it also starts the names of the
    /// segments it uploads to `log_store`, so it must be unique among replicas. Letters,
    /// digits, `.`, `_` and `-`, at most 128, not starting with `.`. [default: the host name (a
    /// pod's name), else `cairn`]
    #[arg(long, env = "CAIRN_REPLICA_ID", value_name = "NAME")]
    pub replica_id: Option<String>,

    /// Object-store prefix (`s3://bucket/logs`, `gs://`, `az://`, `file://`) where this replica
    /// uploads every sealed prediction and feedback segment, partitioned by model and day:
    /// `<prefix>/<model>/predictions/date=YYYY-MM-DD/<replica_id>-<start_ms>-<seq>.parquet`
    /// (and `feedback/`). A local segment is deleted once its upload is confirmed, so local
    /// retention is off; `log_store_backlog_max_bytes` bounds what waits on disk. Unset, the
    /// log stays on local disk.
    #[arg(long, env = "CAIRN_LOG_STORE", value_name = "URL")]
    pub log_store: Option<String>,

    /// Per model, bytes of log segments on local disk not yet uploaded to `log_store` (the open
    /// ones included). Beyond it, new records are refused as `prediction_log_when_full` says
    /// (dropped and counted, or a bounded wait) and feedback is answered 503, until uploads
    /// catch up. At least `prediction_log_segment_bytes`. [default: 1073741824]
    #[arg(long, env = "CAIRN_LOG_STORE_BACKLOG_MAX_BYTES", value_name = "BYTES")]
    pub log_store_backlog_max_bytes: Option<u64>,

    /// PEM certificate chain (leaf first) for TLS on both the HTTP and the gRPC port; with
    /// `tls_key_file`. Unset, both serve plain text. The files are watched: a rotated
    /// certificate is served from the next handshake, without a restart.
    #[arg(long, env = "CAIRN_TLS_CERT_FILE", value_name = "FILE")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_cert_file`.
    #[arg(long, env = "CAIRN_TLS_KEY_FILE", value_name = "FILE")]
    pub tls_key_file: Option<PathBuf>,

    /// PEM CA certificates for mutual TLS: clients must present a certificate one of them
    /// signed, or the handshake fails. Needs `tls_cert_file`.
    #[arg(long, env = "CAIRN_TLS_CLIENT_CA_FILE", value_name = "FILE")]
    pub tls_client_ca_file: Option<PathBuf>,

    /// Directory holding `<model>/config.toml` and `<model>/<version>/model.onnx`, or an
    /// object-store URL laid out the same way (`s3://bucket/prefix`, `gs://`, `az://`,
    /// `file://`), mirrored under `state_dir` and listed every `repository_poll_interval_s`.
    /// [default: models]
    #[arg(long, env = "CAIRN_MODEL_REPOSITORY", value_name = "DIR|URL")]
    pub model_repository: Option<PathBuf>,

    /// Largest request body accepted, in bytes, after decompression; larger ones get 413.
    /// Bounds the memory one request can take. [default: 67108864]
    #[arg(long, env = "CAIRN_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,

    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish before the server
    /// exits anyway. [default: 30]
    #[arg(long, env = "CAIRN_SHUTDOWN_TIMEOUT_S", value_name = "SECONDS")]
    pub shutdown_timeout_s: Option<u64>,

    /// Worker threads of the HTTP runtime. Engines run on their own threads, so a few suffice.
    /// [default: number of CPUs]
    #[arg(long, env = "CAIRN_HTTP_THREADS", value_name = "N")]
    pub http_threads: Option<usize>,

    /// Seconds between rescans of the repository for new, changed or removed models and
    /// versions; 0 turns polling off (loads then happen only through the API).
    /// [default: 0; 10 when the repository is an object store]
    #[arg(long, env = "CAIRN_REPOSITORY_POLL_INTERVAL_S", value_name = "SECONDS")]
    pub repository_poll_interval_s: Option<u64>,

    /// Directory for state that must survive a restart (deployments; an object-store
    /// repository's mirror). [default: <model_repository>/.cairn; .cairn for an object store]
    #[arg(long, env = "CAIRN_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Bearer token required by the management endpoints (repository, deployments). Unset, they
    /// are open: set it wherever the port is reachable by more than its operators. A token given
    /// as a flag is visible to every local user in the process list; prefer the environment
    /// variable or `--admin-token-file`.
    #[arg(
        long,
        env = "CAIRN_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,

    /// File holding the admin token (surrounding whitespace is ignored), so that the token
    /// appears neither in the process list nor in the environment.
    #[arg(long, env = "CAIRN_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Bearer token that may send ground truth (`POST /v2/models/{m}/feedback`), which steers
    /// canary decisions and retraining data; the admin token is accepted there too. When any
    /// token is set, feedback needs one of them. Give it to the systems that report outcomes,
    /// so they need no admin rights. [default: the admin token]
    #[arg(
        long,
        env = "CAIRN_FEEDBACK_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub feedback_token: Option<String>,

    /// File holding the feedback token (surrounding whitespace is ignored).
    #[arg(long, env = "CAIRN_FEEDBACK_TOKEN_FILE", value_name = "FILE")]
    pub feedback_token_file: Option<PathBuf>,

    /// Require the admin token on inference too. A plain flag (`--protect-inference`); the file
    /// and the environment take true or false. [default: false]
    #[arg(
        long,
        env = "CAIRN_PROTECT_INFERENCE",
        value_name = "BOOL",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub protect_inference: Option<bool>,

    /// Most client connections open at once. Beyond it a new connection gets an immediate 503
    /// and is closed, so the server never runs out of file descriptors; the effective value is
    /// lowered to fit the process's file limit. [default: 2048]
    #[arg(long, env = "CAIRN_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,

    /// Most request-body bytes held at once across all connections (bodies being received,
    /// decompressed or served). A request that would go beyond it gets 503 at once. At least
    /// `max_body_bytes`. [default: 536870912]
    #[arg(long, env = "CAIRN_MAX_BUFFERED_BODY_BYTES", value_name = "BYTES")]
    pub max_buffered_body_bytes: Option<usize>,

    /// Seconds a new connection may take to send its first complete request head; a connection
    /// that sends nothing, or only part of its headers, is closed after it. [default: 10]
    #[arg(long, env = "CAIRN_HEADER_READ_TIMEOUT_S", value_name = "SECONDS")]
    pub header_read_timeout_s: Option<u64>,

    /// Seconds a keep-alive connection may stay idle (no request in flight, none started)
    /// before the server closes it. [default: 60]
    #[arg(long, env = "CAIRN_KEEP_ALIVE_TIMEOUT_S", value_name = "SECONDS")]
    pub keep_alive_timeout_s: Option<u64>,

    /// Seconds a request body may take to arrive in full; a slower one gets 408 and its bytes
    /// are freed. [default: 60]
    #[arg(long, env = "CAIRN_BODY_READ_TIMEOUT_S", value_name = "SECONDS")]
    pub body_read_timeout_s: Option<u64>,

    /// Memory budget of a model load, in bytes. Each version is first loaded and warmed up in a
    /// child process limited to this much address space, so a model that would exhaust memory
    /// (constant folding, huge initializers, a runaway warm-up) fails with 400 while what
    /// serves keeps serving. 0 turns the check off. [default: 4294967296]
    #[arg(long, env = "CAIRN_MODEL_LOAD_MEMORY_BYTES", value_name = "BYTES")]
    pub model_load_memory_bytes: Option<u64>,

    /// Seconds the checked load of one version may take before it is stopped and the version
    /// fails to load. [default: 300]
    #[arg(long, env = "CAIRN_MODEL_LOAD_TIMEOUT_S", value_name = "SECONDS")]
    pub model_load_timeout_s: Option<u64>,

    /// Directory of the prediction log, one subdirectory per monitored model (predictions,
    /// feedback, drift reports). [default: <state_dir>/predictions]
    #[arg(long, env = "CAIRN_PREDICTION_LOG_DIR", value_name = "DIR")]
    pub prediction_log_dir: Option<PathBuf>,

    /// The writer syncs what it has taken at least this often, in milliseconds; 0 syncs after
    /// every batch it takes. What a crash can no longer lose is what the synced watermark
    /// (`cairn_prediction_log_synced_timestamp_seconds`) says: under load records also wait in
    /// the queue, so a crash may lose more than this interval. [default: 1000]
    #[arg(long, env = "CAIRN_PREDICTION_LOG_FSYNC_MS", value_name = "MS")]
    pub prediction_log_fsync_ms: Option<u64>,

    /// An open log segment is sealed to Parquet once it holds this many bytes.
    /// [default: 67108864]
    #[arg(long, env = "CAIRN_PREDICTION_LOG_SEGMENT_BYTES", value_name = "BYTES")]
    pub prediction_log_segment_bytes: Option<u64>,

    /// ... or once it has been open this many seconds. [default: 3600]
    #[arg(
        long,
        env = "CAIRN_PREDICTION_LOG_SEGMENT_AGE_S",
        value_name = "SECONDS"
    )]
    pub prediction_log_segment_age_s: Option<u64>,

    /// Per model, sealed segments beyond this many bytes are deleted, oldest first; 0 keeps
    /// them all. [default: 1073741824]
    #[arg(
        long,
        env = "CAIRN_PREDICTION_LOG_RETENTION_BYTES",
        value_name = "BYTES"
    )]
    pub prediction_log_retention_bytes: Option<u64>,

    /// Sealed segments older than this many seconds are deleted; 0 keeps them. [default: 604800]
    #[arg(
        long,
        env = "CAIRN_PREDICTION_LOG_RETENTION_AGE_S",
        value_name = "SECONDS"
    )]
    pub prediction_log_retention_age_s: Option<u64>,

    /// Requests waiting for a model's log writer; beyond, `prediction_log_when_full` applies.
    /// [default: 8192]
    #[arg(long, env = "CAIRN_PREDICTION_LOG_QUEUE", value_name = "REQUESTS")]
    pub prediction_log_queue: Option<usize>,

    /// Bytes the waiting records may hold, per model (their values, 32 bytes each, plus
    /// text): 8192 records of 500 values fit. [default: 134217728]
    #[arg(long, env = "CAIRN_PREDICTION_LOG_QUEUE_BYTES", value_name = "BYTES")]
    pub prediction_log_queue_bytes: Option<usize>,

    /// When the writer falls behind: `drop` the record and count it
    /// (`cairn_prediction_log_dropped_total`), or `block` the request until there is room
    /// (at most `prediction_log_block_ms`, then drop). [default: drop]
    #[arg(
        long,
        env = "CAIRN_PREDICTION_LOG_WHEN_FULL",
        value_name = "drop|block"
    )]
    pub prediction_log_when_full: Option<WhenFull>,

    /// The longest a request waits for room in the log with `block`. [default: 1000]
    #[arg(long, env = "CAIRN_PREDICTION_LOG_BLOCK_MS", value_name = "MS")]
    pub prediction_log_block_ms: Option<u64>,

    /// Recent predictions kept in memory per model for matching feedback; feedback for older
    /// ones is stored but counted as unknown. [default: 100000]
    #[arg(long, env = "CAIRN_FEEDBACK_INDEX_ROWS", value_name = "ROWS")]
    pub feedback_index_rows: Option<usize>,

    /// Directory of the training configs, `<model>.toml` each (`POST /v2/models/{m}/train` and
    /// `[retrain]` use them). [default: configs/train]
    #[arg(long, env = "CAIRN_TRAIN_CONFIG_DIR", value_name = "DIR")]
    pub train_config_dir: Option<PathBuf>,

    /// Training jobs that may run at once, over all models (one per model). [default: 1]
    #[arg(long, env = "CAIRN_MAX_TRAINING_JOBS", value_name = "JOBS")]
    pub max_training_jobs: Option<usize>,

    /// The onnxruntime library for `[engine] kind = "ort"` (and `auto`), e.g. the PyPI wheel's
    /// `.../site-packages/onnxruntime/capi/libonnxruntime.so.1.x`. [default: ORT_DYLIB_PATH, else
    /// libonnxruntime.so.1 on the loader's path]
    #[arg(long, env = "CAIRN_ONNXRUNTIME_LIBRARY", value_name = "FILE")]
    pub onnxruntime_library: Option<PathBuf>,

    /// Directories, `:`-separated, holding CUDA 13's cuBLAS and NVRTC for the CUDA engine when
    /// they are on no loader path, e.g. a Python environment's `site-packages/nvidia` (pip's
    /// nvidia-* wheels); each is searched itself and in its `*/lib`, `*/*/lib`. Logged at start.
    /// [default: none: the loader's path only]
    #[arg(long, env = "CAIRN_CUDA_LIBRARY_PATH", value_name = "DIRS")]
    pub cuda_library_path: Option<String>,
}

/// What the prediction log does when its writer falls behind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    #[default]
    Drop,
    Block,
}

impl ServerSettings {
    /// Reads a settings file.
    pub fn from_file(path: &Path) -> Result<ServerSettings, ConfigError> {
        let text = super::read_config_text(path)?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Fills every unset field of `self` from `lower`.
    pub fn or(self, lower: ServerSettings) -> ServerSettings {
        macro_rules! layered {
            ($($field:ident),* $(,)?) => {
                ServerSettings { $($field: self.$field.or(lower.$field)),* }
            };
        }
        layered!(
            listen,
            grpc_listen,
            deployment_state,
            replica_id,
            log_store,
            log_store_backlog_max_bytes,
            tls_cert_file,
            tls_key_file,
            tls_client_ca_file,
            model_repository,
            max_body_bytes,
            shutdown_timeout_s,
            http_threads,
            repository_poll_interval_s,
            state_dir,
            admin_token,
            admin_token_file,
            feedback_token,
            feedback_token_file,
            protect_inference,
            max_connections,
            max_buffered_body_bytes,
            header_read_timeout_s,
            keep_alive_timeout_s,
            body_read_timeout_s,
            model_load_memory_bytes,
            model_load_timeout_s,
            prediction_log_dir,
            prediction_log_fsync_ms,
            prediction_log_segment_bytes,
            prediction_log_segment_age_s,
            prediction_log_retention_bytes,
            prediction_log_retention_age_s,
            prediction_log_queue,
            prediction_log_queue_bytes,
            prediction_log_when_full,
            prediction_log_block_ms,
            feedback_index_rows,
            train_config_dir,
            max_training_jobs,
            onnxruntime_library,
            cuda_library_path,
        )
    }
}

/// Triton's gRPC port.
const DEFAULT_GRPC_PORT: u16 = 8001;

/// The gRPC address when none is set: the HTTP host on Triton's gRPC port, or on a free port
/// when the HTTP port is itself picked freely (so servers started side by side on port 0 never
/// collide on 8001).
fn default_grpc_listen(listen: &str) -> String {
    match listen.rsplit_once(':') {
        Some((host, "0")) => format!("{host}:0"),
        Some((host, _)) => format!("{host}:{DEFAULT_GRPC_PORT}"),
        None => format!("{listen}:{DEFAULT_GRPC_PORT}"),
    }
}

/// Default of `max_body_bytes`.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 << 20;

/// The effective settings, defaults applied and values checked.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: String,
    /// `None`: no gRPC service.
    pub grpc_listen: Option<String>,
    /// `None`: plain text.
    pub tls: Option<crate::tls::TlsFiles>,
    /// The object-store URL the repository mirrors; `model_repository` is then the mirror.
    pub remote_repository: Option<String>,
    /// The object-store prefix of the deployments shared by replicas.
    pub deployment_state: Option<String>,
    /// This replica's name in the shared leases.
    pub replica_id: String,
    pub model_repository: PathBuf,
    pub max_body_bytes: usize,
    pub shutdown_timeout: Duration,
    pub http_threads: usize,
    /// `None`: no polling.
    pub repository_poll_interval: Option<Duration>,
    pub state_dir: PathBuf,
    pub admin_token: Option<String>,
    /// Accepted on the feedback route besides the admin token.
    pub feedback_token: Option<String>,
    pub protect_inference: bool,
    pub connections: ConnectionLimits,
    pub load: LoadLimits,
    pub monitor: MonitorSettings,
    pub training: TrainingSettings,
    /// `onnxruntime_library`, when set.
    pub onnxruntime_library: Option<PathBuf>,
    /// `cuda_library_path`, when set (`:`-separated directories).
    pub cuda_library_path: Option<String>,
}

/// Training jobs the server runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrainingSettings {
    /// `<model>.toml` per model.
    pub config_dir: PathBuf,
    /// Jobs running at once, over all models.
    pub max_jobs: usize,
    /// The runs store (`<state_dir>/runs`).
    pub runs_dir: PathBuf,
    /// The log store and this replica's id, when the log is in one (`monitor.log_store` and
    /// `replica_id`, put in by the server): a job whose `data.log.dir` is left out reads every
    /// replica's segments there, and this replica's not yet uploaded from disk.
    pub log_store: Option<(String, String)>,
}

impl TrainingSettings {
    pub fn defaults(state_dir: &Path) -> TrainingSettings {
        TrainingSettings {
            config_dir: PathBuf::from("configs/train"),
            max_jobs: 1,
            runs_dir: state_dir.join("runs"),
            log_store: None,
        }
    }
}

/// The prediction log's server-wide settings; what each model logs is its `[monitoring]`.
#[derive(Clone, Debug, PartialEq)]
pub struct MonitorSettings {
    pub dir: PathBuf,
    /// Records reach disk within this long; zero: after every batch.
    pub fsync: Duration,
    pub segment_max_bytes: u64,
    pub segment_max_age: Duration,
    pub retention_max_bytes: Option<u64>,
    pub retention_max_age: Option<Duration>,
    pub queue: usize,
    pub queue_bytes: usize,
    pub when_full: WhenFull,
    pub block: Duration,
    pub feedback_index_rows: usize,
    /// `log_store`: where sealed segments are uploaded; `None`, they stay local.
    pub log_store: Option<String>,
    /// `log_store_backlog_max_bytes`, per model.
    pub log_store_backlog_max_bytes: u64,
}

/// The largest segment uploaded to a log store (one request each; S3 takes 5 GiB at most).
pub const MAX_STORE_SEGMENT_BYTES: u64 = 4 << 30;

/// Default of `log_store_backlog_max_bytes`: what the local retention kept by default.
pub const DEFAULT_LOG_STORE_BACKLOG_BYTES: u64 = 1 << 30;

impl MonitorSettings {
    pub fn defaults(state_dir: &Path) -> MonitorSettings {
        MonitorSettings {
            dir: state_dir.join("predictions"),
            fsync: Duration::from_millis(1000),
            segment_max_bytes: 64 << 20,
            segment_max_age: Duration::from_secs(3600),
            retention_max_bytes: Some(1 << 30),
            retention_max_age: Some(Duration::from_secs(7 * 24 * 3600)),
            queue: 8192,
            queue_bytes: 128 << 20,
            when_full: WhenFull::Drop,
            block: Duration::from_millis(1000),
            feedback_index_rows: 100_000,
            log_store: None,
            log_store_backlog_max_bytes: DEFAULT_LOG_STORE_BACKLOG_BYTES,
        }
    }
}

/// What one client, or all of them together, may hold of the server's connections and memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub max_buffered_body_bytes: usize,
    pub header_read_timeout: Duration,
    pub keep_alive_timeout: Duration,
    pub body_read_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 2048,
            max_buffered_body_bytes: 512 << 20,
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(60),
        }
    }
}

/// What a model load may take. Built from the settings; the repository hands it to every load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadLimits {
    /// Largest generated warm-up batch, in bytes of tensor data: the same bound a request has.
    pub max_sample_bytes: usize,
    /// The checked load in a child process; `None` loads in process only.
    pub check: Option<LoadCheck>,
}

/// A trial load of each version in a child process under a memory limit and a deadline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadCheck {
    /// The `cairn` executable, whose hidden `check-load` command runs the trial.
    pub exe: PathBuf,
    pub memory_bytes: u64,
    pub timeout: Duration,
}

impl ServerConfig {
    /// Applies defaults. `origin` names where the settings came from, for error messages.
    /// `exe` is the `cairn` executable that runs checked loads (`None`: no checked loads, as
    /// when the server is embedded in another program).
    ///
    /// Each group of settings is checked by its own helper; they run in this order, so that of
    /// several bad settings the same one is reported first, whatever the grouping.
    pub fn from_settings(
        s: ServerSettings,
        origin: &Path,
        exe: Option<PathBuf>,
    ) -> Result<ServerConfig, ConfigError> {
        let check = Check { origin };
        let max_body_bytes = s.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if max_body_bytes < 1024 {
            return Err(check.invalid(
                "max_body_bytes",
                format!("{max_body_bytes} is too small to hold a request (at least 1024)"),
            ));
        }
        let http_threads = s
            .http_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
        if http_threads == 0 {
            return Err(check.invalid("http_threads", "must be at least 1".into()));
        }
        let (admin_token, feedback_token) = check.tokens(&s)?;
        let connections = check.connection_limits(&s, max_body_bytes)?;
        let load = check.load_limits(&s, max_body_bytes, exe)?;
        let repository = RepositoryPaths::of(&s);
        let monitor = check.monitor_settings(&s, &repository.state_dir)?;
        let training = check.training_settings(&s, &repository.state_dir)?;
        let (listen, grpc_listen) = check.listeners(&s)?;
        let tls = check.tls(&s)?;
        let RepositoryPaths {
            remote_repository,
            state_dir,
            model_repository,
        } = repository;
        Ok(ServerConfig {
            listen,
            grpc_listen,
            tls,
            state_dir,
            model_repository,
            max_body_bytes,
            shutdown_timeout: Duration::from_secs(s.shutdown_timeout_s.unwrap_or(30)),
            http_threads,
            // An object store is polled by listing, every 10 s unless told otherwise.
            repository_poll_interval: match (s.repository_poll_interval_s, &remote_repository) {
                (None, Some(_)) => Some(Duration::from_secs(10)),
                (v, _) => v.filter(|&s| s > 0).map(Duration::from_secs),
            },
            remote_repository,
            deployment_state: check.deployment_state(s.deployment_state)?,
            replica_id: check.replica_id(s.replica_id)?,
            admin_token,
            feedback_token,
            protect_inference: s.protect_inference.unwrap_or(false),
            connections,
            load,
            monitor,
            training,
            onnxruntime_library: s.onnxruntime_library,
            cuda_library_path: s.cuda_library_path,
        })
    }

    /// Settings for tests and embedding: everything default but the repository, on a free
    /// loopback port, with loads in process only.
    pub fn for_repository(dir: &Path) -> ServerConfig {
        ServerConfig {
            listen: "127.0.0.1:0".into(),
            grpc_listen: Some("127.0.0.1:0".into()),
            tls: None,
            remote_repository: None,
            deployment_state: None,
            replica_id: crate::lease::default_replica_id(),
            model_repository: dir.to_path_buf(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            shutdown_timeout: Duration::from_secs(30),
            http_threads: 2,
            repository_poll_interval: None,
            state_dir: dir.join(".cairn"),
            admin_token: None,
            feedback_token: None,
            protect_inference: false,
            connections: ConnectionLimits::default(),
            load: LoadLimits {
                max_sample_bytes: DEFAULT_MAX_BODY_BYTES,
                check: None,
            },
            monitor: MonitorSettings::defaults(&dir.join(".cairn")),
            training: TrainingSettings::defaults(&dir.join(".cairn")),
            onnxruntime_library: None,
            cuda_library_path: None,
        }
    }

    /// Turns on checked loads run by `exe` with the default budget and deadline.
    pub fn with_load_check(mut self, exe: PathBuf) -> ServerConfig {
        self.load.check = Some(LoadCheck {
            exe,
            memory_bytes: DEFAULT_LOAD_MEMORY_BYTES,
            timeout: Duration::from_secs(300),
        });
        self
    }
}

/// Default of `model_load_memory_bytes`.
pub const DEFAULT_LOAD_MEMORY_BYTES: u64 = 4 << 30;
/// Below this a check process cannot even start.
const MIN_LOAD_MEMORY_BYTES: u64 = 64 << 20;
/// A token file is a few bytes; anything large is a wrong path.
const MAX_TOKEN_FILE_BYTES: u64 = 4096;

fn read_token_file(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut text = String::new();
    file.take(MAX_TOKEN_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read: {e}"))?;
    if text.len() as u64 > MAX_TOKEN_FILE_BYTES {
        return Err(format!("is larger than {MAX_TOKEN_FILE_BYTES} bytes"));
    }
    Ok(text.trim().to_string())
}

/// Where the repository is served from and where state is kept: `model_repository` names either
/// a directory or an object-store URL, and the latter is served from a mirror in `state_dir`.
struct RepositoryPaths {
    /// The object-store URL, when the repository lives in one.
    remote_repository: Option<String>,
    state_dir: PathBuf,
    /// The directory served: the one named, or the mirror.
    model_repository: PathBuf,
}

impl RepositoryPaths {
    fn of(s: &ServerSettings) -> RepositoryPaths {
        let named = s
            .model_repository
            .clone()
            .unwrap_or_else(|| PathBuf::from("models"));
        // An object-store URL: the repository served is its mirror under the state directory.
        let remote_repository = named
            .to_str()
            .filter(|r| crate::store::is_url(r))
            .map(|r| r.to_string());
        let state_dir = s
            .state_dir
            .clone()
            .unwrap_or_else(|| match &remote_repository {
                Some(_) => PathBuf::from(".cairn"),
                None => named.join(".cairn"),
            });
        let model_repository = match &remote_repository {
            Some(_) => state_dir.join("repository"),
            None => named,
        };
        RepositoryPaths {
            remote_repository,
            state_dir,
            model_repository,
        }
    }
}

/// The checks of [`ServerConfig::from_settings`], one method per group of settings. It carries
/// the settings' origin so that every error names the file (or flags) the bad value came from.
struct Check<'a> {
    origin: &'a Path,
}

impl Check<'_> {
    fn invalid(&self, key: &str, reason: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.origin.to_path_buf(),
            key: key.into(),
            reason,
        }
    }

    /// A duration in whole seconds that must not be zero.
    fn seconds(
        &self,
        key: &str,
        value: Option<u64>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match value {
            None => Ok(default),
            Some(0) => Err(self.invalid(key, "must be at least 1".into())),
            Some(v) => Ok(Duration::from_secs(v)),
        }
    }

    /// A count that must not be zero.
    fn positive(&self, key: &str, v: Option<u64>, default: u64) -> Result<u64, ConfigError> {
        match v {
            Some(0) => Err(self.invalid(key, "must be at least 1".into())),
            Some(v) => Ok(v),
            None => Ok(default),
        }
    }

    /// A token given either as `key` or in the file `key_file`, never both, and never blank.
    fn token(
        &self,
        key: &str,
        value: Option<String>,
        file: &Option<PathBuf>,
    ) -> Result<Option<String>, ConfigError> {
        let token = match (value, file) {
            (Some(_), Some(_)) => {
                return Err(self.invalid(
                    &format!("{key}_file"),
                    format!("both {key} and {key}_file are set; keep one"),
                ))
            }
            (Some(token), None) => Some(token),
            (None, Some(file)) => Some(read_token_file(file).map_err(|reason| {
                self.invalid(
                    &format!("{key}_file"),
                    format!("{}: {reason}", file.display()),
                )
            })?),
            (None, None) => None,
        };
        if token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err(self.invalid(key, "must not be empty".into()));
        }
        Ok(token)
    }

    /// The admin and feedback tokens, and whether inference can be protected with them.
    fn tokens(&self, s: &ServerSettings) -> Result<(Option<String>, Option<String>), ConfigError> {
        let admin_token = self.token("admin_token", s.admin_token.clone(), &s.admin_token_file)?;
        let feedback_token = self.token(
            "feedback_token",
            s.feedback_token.clone(),
            &s.feedback_token_file,
        )?;
        if s.protect_inference == Some(true) && admin_token.is_none() {
            return Err(self.invalid(
                "protect_inference",
                "is true but no admin_token is set to protect it with".into(),
            ));
        }
        Ok((admin_token, feedback_token))
    }

    /// What connections may hold: their number, buffered bytes (room for at least the largest
    /// request) and timeouts.
    fn connection_limits(
        &self,
        s: &ServerSettings,
        max_body_bytes: usize,
    ) -> Result<ConnectionLimits, ConfigError> {
        let defaults = ConnectionLimits::default();
        let connections = ConnectionLimits {
            max_connections: match s.max_connections {
                Some(0) => return Err(self.invalid("max_connections", "must be at least 1".into())),
                Some(n) => n,
                None => defaults.max_connections,
            },
            max_buffered_body_bytes: s
                .max_buffered_body_bytes
                .unwrap_or(defaults.max_buffered_body_bytes.max(max_body_bytes)),
            header_read_timeout: self.seconds(
                "header_read_timeout_s",
                s.header_read_timeout_s,
                defaults.header_read_timeout,
            )?,
            keep_alive_timeout: self.seconds(
                "keep_alive_timeout_s",
                s.keep_alive_timeout_s,
                defaults.keep_alive_timeout,
            )?,
            body_read_timeout: self.seconds(
                "body_read_timeout_s",
                s.body_read_timeout_s,
                defaults.body_read_timeout,
            )?,
        };
        if connections.max_buffered_body_bytes < max_body_bytes {
            return Err(self.invalid(
                "max_buffered_body_bytes",
                format!(
                    "{} is below max_body_bytes ({max_body_bytes}), so the largest request could \
                     never be read",
                    connections.max_buffered_body_bytes
                ),
            ));
        }
        Ok(connections)
    }

    /// What a model load may take: the checked load's memory budget and deadline (run by `exe`
    /// unless the budget is 0), and the warm-up batch bound by `max_body_bytes`.
    fn load_limits(
        &self,
        s: &ServerSettings,
        max_body_bytes: usize,
        exe: Option<PathBuf>,
    ) -> Result<LoadLimits, ConfigError> {
        let memory_bytes = s
            .model_load_memory_bytes
            .unwrap_or(DEFAULT_LOAD_MEMORY_BYTES);
        if memory_bytes != 0 && memory_bytes < MIN_LOAD_MEMORY_BYTES {
            return Err(self.invalid(
                "model_load_memory_bytes",
                format!(
                    "{memory_bytes} is too small to load any model (at least \
                     {MIN_LOAD_MEMORY_BYTES}, or 0 to turn the check off)"
                ),
            ));
        }
        let load_timeout = self.seconds(
            "model_load_timeout_s",
            s.model_load_timeout_s,
            Duration::from_secs(300),
        )?;
        Ok(LoadLimits {
            max_sample_bytes: max_body_bytes,
            check: exe.filter(|_| memory_bytes > 0).map(|exe| LoadCheck {
                exe,
                memory_bytes,
                timeout: load_timeout,
            }),
        })
    }

    /// The prediction log's settings, defaulting under `state_dir`.
    fn monitor_settings(
        &self,
        s: &ServerSettings,
        state_dir: &Path,
    ) -> Result<MonitorSettings, ConfigError> {
        let d = MonitorSettings::defaults(state_dir);
        let settings = MonitorSettings {
            dir: s.prediction_log_dir.clone().unwrap_or(d.dir),
            fsync: s
                .prediction_log_fsync_ms
                .map_or(d.fsync, Duration::from_millis),
            segment_max_bytes: self.positive(
                "prediction_log_segment_bytes",
                s.prediction_log_segment_bytes,
                d.segment_max_bytes,
            )?,
            segment_max_age: Duration::from_secs(self.positive(
                "prediction_log_segment_age_s",
                s.prediction_log_segment_age_s,
                d.segment_max_age.as_secs(),
            )?),
            retention_max_bytes: match s.prediction_log_retention_bytes {
                Some(0) => None,
                Some(v) => Some(v),
                None => d.retention_max_bytes,
            },
            retention_max_age: match s.prediction_log_retention_age_s {
                Some(0) => None,
                Some(v) => Some(Duration::from_secs(v)),
                None => d.retention_max_age,
            },
            queue: match s.prediction_log_queue {
                Some(0) => {
                    return Err(self.invalid("prediction_log_queue", "must be at least 1".into()))
                }
                Some(n) => n,
                None => d.queue,
            },
            queue_bytes: s.prediction_log_queue_bytes.unwrap_or(d.queue_bytes),
            when_full: s.prediction_log_when_full.unwrap_or(d.when_full),
            block: s
                .prediction_log_block_ms
                .map_or(d.block, Duration::from_millis),
            feedback_index_rows: match s.feedback_index_rows {
                Some(0) => {
                    return Err(self.invalid("feedback_index_rows", "must be at least 1".into()))
                }
                Some(n) => n,
                None => d.feedback_index_rows,
            },
            log_store: None,
            log_store_backlog_max_bytes: s
                .log_store_backlog_max_bytes
                .unwrap_or(d.log_store_backlog_max_bytes),
        };
        self.log_store(s, settings)
    }

    /// The log's object store: a URL, a backlog that holds at least one segment, and segments
    /// that close within a day (readers prune by day). Local retention is off with it: the
    /// uploader deletes each segment once uploaded, never before.
    fn log_store(
        &self,
        s: &ServerSettings,
        mut settings: MonitorSettings,
    ) -> Result<MonitorSettings, ConfigError> {
        let Some(url) = s.log_store.clone() else {
            return Ok(settings);
        };
        if !crate::store::is_url(&url) {
            return Err(self.invalid(
                "log_store",
                format!("'{url}' is not an object-store URL (s3://bucket/logs, file:///dir, ...)"),
            ));
        }
        // What may wait while the store is healthy: an open segment per logged layout, the
        // feedback segment, and one being sealed (there twice for a moment).
        let segments = cairn_monitor::log::MAX_OPEN as u64 + 2;
        let least = settings.segment_max_bytes.saturating_mul(segments);
        if settings.log_store_backlog_max_bytes < least {
            return Err(self.invalid(
                "log_store_backlog_max_bytes",
                format!(
                    "{} is below {segments} × prediction_log_segment_bytes ({least}): the open \
                     segments alone could fill the backlog with the store healthy",
                    settings.log_store_backlog_max_bytes
                ),
            ));
        }
        // A segment goes up in one request: S3 takes at most 5 GiB in one.
        if settings.segment_max_bytes > MAX_STORE_SEGMENT_BYTES {
            return Err(self.invalid(
                "prediction_log_segment_bytes",
                format!(
                    "{} is over {MAX_STORE_SEGMENT_BYTES} with a log_store: a segment is \
                     uploaded in one request",
                    settings.segment_max_bytes
                ),
            ));
        }
        if settings.segment_max_age > crate::monitoring::log_store::MAX_SEGMENT_AGE {
            return Err(self.invalid(
                "prediction_log_segment_age_s",
                format!(
                    "{} is over {} with a log_store: readers look for a row in its own day's \
                     partition and the day before's only",
                    settings.segment_max_age.as_secs(),
                    crate::monitoring::log_store::MAX_SEGMENT_AGE.as_secs()
                ),
            ));
        }
        if s.prediction_log_retention_bytes.is_some() || s.prediction_log_retention_age_s.is_some()
        {
            tracing::warn!(
                "prediction_log_retention_* is ignored with a log_store: each segment is deleted \
                 once uploaded, and log_store_backlog_max_bytes bounds what waits"
            );
        }
        settings.retention_max_bytes = None;
        settings.retention_max_age = None;
        settings.log_store = Some(url);
        Ok(settings)
    }

    /// Training jobs: their configs, how many run at once, and the runs store in `state_dir`.
    fn training_settings(
        &self,
        s: &ServerSettings,
        state_dir: &Path,
    ) -> Result<TrainingSettings, ConfigError> {
        Ok(TrainingSettings {
            config_dir: s
                .train_config_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("configs/train")),
            max_jobs: match s.max_training_jobs {
                Some(0) => {
                    return Err(self.invalid("max_training_jobs", "must be at least 1".into()))
                }
                Some(n) if n > 64 => {
                    return Err(self.invalid("max_training_jobs", "at most 64".into()))
                }
                Some(n) => n,
                None => 1,
            },
            runs_dir: state_dir.join("runs"),
            log_store: None,
        })
    }

    /// The HTTP address and the gRPC one (`None`: gRPC off).
    fn listeners(&self, s: &ServerSettings) -> Result<(String, Option<String>), ConfigError> {
        let listen = s.listen.clone().unwrap_or_else(|| "0.0.0.0:8000".into());
        let grpc_listen = match s.grpc_listen.as_deref().map(str::trim) {
            Some("off") => None,
            Some("") => {
                return Err(self.invalid(
                    "grpc_listen",
                    "is empty (use \"off\" to turn gRPC off)".into(),
                ))
            }
            Some(addr) => Some(addr.to_string()),
            None => Some(default_grpc_listen(&listen)),
        };
        Ok((listen, grpc_listen))
    }

    /// The TLS files shared by both listeners: a certificate and its key, or neither; a client
    /// CA only with them.
    fn tls(&self, s: &ServerSettings) -> Result<Option<crate::tls::TlsFiles>, ConfigError> {
        match (
            s.tls_cert_file.clone(),
            s.tls_key_file.clone(),
            s.tls_client_ca_file.clone(),
        ) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), client_ca) => Ok(Some(crate::tls::TlsFiles {
                cert,
                key,
                client_ca,
            })),
            (None, None, Some(_)) => Err(self.invalid(
                "tls_client_ca_file",
                "needs tls_cert_file and tls_key_file: mutual TLS is TLS first".into(),
            )),
            (Some(_), None, _) => {
                Err(self.invalid("tls_key_file", "is unset while tls_cert_file is set".into()))
            }
            (None, Some(_), _) => {
                Err(self.invalid("tls_cert_file", "is unset while tls_key_file is set".into()))
            }
        }
    }

    /// This replica's name: given, or the host's.
    fn replica_id(&self, given: Option<String>) -> Result<String, ConfigError> {
        let id = given.unwrap_or_else(crate::lease::default_replica_id);
        let fine = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        // It names objects in the shared stores (`<replica>-<start>-<seq>.parquet`, leases):
        // one plain path segment, never `.` or `..`.
        if id.is_empty() || id.len() > 128 || !id.chars().all(fine) || id.starts_with('.') {
            return Err(self.invalid(
                "replica_id",
                format!(
                    "'{id}' is not 1 to 128 letters, digits, '.', '_' or '-' (not starting \
                     with '.')"
                ),
            ));
        }
        Ok(id)
    }

    /// The object-store prefix shared by replicas: a URL of a store that can replace an object
    /// conditionally.
    fn deployment_state(&self, url: Option<String>) -> Result<Option<String>, ConfigError> {
        match url {
            Some(url) if !crate::store::is_url(&url) => Err(self.invalid(
                "deployment_state",
                format!("'{url}' is not an object-store URL (s3://bucket/prefix, ...)"),
            )),
            // The local file system store has no compare-and-swap on an existing object:
            // two replicas would overwrite each other's changes.
            Some(url) if url.starts_with("file:") => Err(self.invalid(
                "deployment_state",
                format!(
                    "'{url}': a file:// store cannot replace an object conditionally, \
                     so replicas would overwrite each other; use s3://, gs:// or az:// \
                     (unset, the server keeps its deployments in state_dir)"
                ),
            )),
            other => Ok(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_and_defaults() {
        let file: ServerSettings = toml::from_str(
            "listen = \"127.0.0.1:9000\"\nmax_body_bytes = 2048\nmodel_repository = \"repo\"\n\
             cuda_library_path = \"/opt/venv/site-packages/nvidia:/usr/local/cuda/lib64\"",
        )
        .unwrap();
        let flags = ServerSettings {
            listen: Some("127.0.0.1:0".into()),
            ..Default::default()
        };
        let c = ServerConfig::from_settings(flags.or(file), Path::new("x.toml"), None).unwrap();
        assert_eq!(c.listen, "127.0.0.1:0");
        assert_eq!(c.max_body_bytes, 2048);
        assert_eq!(c.model_repository, PathBuf::from("repo"));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(c.grpc_listen.as_deref(), Some("127.0.0.1:0"));
        assert_eq!(
            c.cuda_library_path.as_deref(),
            Some("/opt/venv/site-packages/nvidia:/usr/local/cuda/lib64")
        );
    }

    #[test]
    fn grpc_follows_the_http_host_on_port_8001_or_is_off() {
        let config = |listen: Option<&str>, grpc: Option<&str>| {
            let s = ServerSettings {
                listen: listen.map(String::from),
                grpc_listen: grpc.map(String::from),
                ..Default::default()
            };
            ServerConfig::from_settings(s, Path::new("x.toml"), None).map(|c| c.grpc_listen)
        };
        assert_eq!(config(None, None).unwrap().as_deref(), Some("0.0.0.0:8001"));
        assert_eq!(
            config(Some("[::1]:9000"), None).unwrap().as_deref(),
            Some("[::1]:8001")
        );
        assert_eq!(
            config(Some("127.0.0.1:9000"), Some("127.0.0.1:7001"))
                .unwrap()
                .as_deref(),
            Some("127.0.0.1:7001")
        );
        assert_eq!(config(None, Some("off")).unwrap(), None);
        assert!(config(None, Some(" ")).is_err());
    }

    #[test]
    fn an_object_store_repository_is_mirrored_and_polled_and_state_needs_conditional_puts() {
        let s = ServerSettings {
            model_repository: Some("s3://models/prod".into()),
            ..Default::default()
        };
        let c = ServerConfig::from_settings(s, Path::new("x"), None).unwrap();
        assert_eq!(c.remote_repository.as_deref(), Some("s3://models/prod"));
        assert_eq!(c.state_dir, PathBuf::from(".cairn"));
        assert_eq!(c.model_repository, PathBuf::from(".cairn/repository"));
        assert_eq!(c.repository_poll_interval, Some(Duration::from_secs(10)));
        let state = |url: &str| ServerSettings {
            deployment_state: Some(url.into()),
            ..Default::default()
        };
        let c = ServerConfig::from_settings(state("s3://b/state"), Path::new("x"), None).unwrap();
        assert_eq!(c.deployment_state.as_deref(), Some("s3://b/state"));
        for bad in ["file:///tmp/state", "state-dir"] {
            let err = ServerConfig::from_settings(state(bad), Path::new("x"), None)
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            let text = err.to_string();
            assert!(
                text.contains("deployment_state") && text.contains(bad),
                "{text}"
            );
        }
    }

    #[test]
    fn a_log_store_turns_local_retention_off_and_is_checked() {
        let store = |url: &str| ServerSettings {
            log_store: Some(url.into()),
            ..Default::default()
        };
        let c =
            ServerConfig::from_settings(store("file:///tmp/logs"), Path::new("x"), None).unwrap();
        assert_eq!(c.monitor.log_store.as_deref(), Some("file:///tmp/logs"));
        assert_eq!(
            c.monitor.log_store_backlog_max_bytes,
            DEFAULT_LOG_STORE_BACKLOG_BYTES
        );
        assert_eq!(
            (c.monitor.retention_max_bytes, c.monitor.retention_max_age),
            (None, None),
            "the uploader deletes segments, once uploaded"
        );
        let c =
            ServerConfig::from_settings(ServerSettings::default(), Path::new("x"), None).unwrap();
        assert!(c.monitor.log_store.is_none() && c.monitor.retention_max_bytes.is_some());
        let cases = [
            (
                store("logs"),
                "key 'log_store': 'logs' is not an object-store URL",
            ),
            (
                ServerSettings {
                    log_store_backlog_max_bytes: Some(1 << 20),
                    ..store("s3://b/logs")
                },
                "key 'log_store_backlog_max_bytes': 1048576 is below 6 × prediction_log_segment_bytes",
            ),
            (
                ServerSettings {
                    prediction_log_segment_age_s: Some(86_401),
                    ..store("s3://b/logs")
                },
                "key 'prediction_log_segment_age_s': 86401 is over 86400",
            ),
        ];
        for (settings, expected) in cases {
            let err = ServerConfig::from_settings(settings, Path::new("s.toml"), None).unwrap_err();
            assert!(err.to_string().contains(expected), "{err}");
        }
        for bad in ["..", ".", ".hidden", "a/b", "", "pod 1", &"x".repeat(129)] {
            let s = ServerSettings {
                replica_id: Some(bad.to_string()),
                ..Default::default()
            };
            let err = ServerConfig::from_settings(s, Path::new("s.toml"), None)
                .err()
                .unwrap_or_else(|| panic!("replica_id {bad:?} accepted"));
            assert!(err.to_string().contains("key 'replica_id'"), "{err}");
        }
    }

    #[test]
    fn unknown_key_and_bad_value_are_named() {
        let err = toml::from_str::<ServerSettings>("listen_addr = \"x\"").unwrap_err();
        assert!(
            err.to_string().contains("unknown field `listen_addr`"),
            "{err}"
        );
        let s = ServerSettings {
            max_body_bytes: Some(10),
            ..Default::default()
        };
        let err =
            ServerConfig::from_settings(s, Path::new("configs/server.toml"), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "configs/server.toml: key 'max_body_bytes': 10 is too small to hold a request (at least 1024)"
        );
    }

    #[test]
    fn limits_are_checked_and_the_load_check_follows_the_executable() {
        let c =
            ServerConfig::from_settings(ServerSettings::default(), Path::new("x"), None).unwrap();
        assert_eq!(c.connections, ConnectionLimits::default());
        assert_eq!(c.load.max_sample_bytes, c.max_body_bytes);
        assert!(c.load.check.is_none());
        let exe = Some(PathBuf::from("/bin/cairn"));
        let c = ServerConfig::from_settings(ServerSettings::default(), Path::new("x"), exe.clone())
            .unwrap();
        let check = c.load.check.unwrap();
        assert_eq!(check.memory_bytes, DEFAULT_LOAD_MEMORY_BYTES);
        let off = ServerSettings {
            model_load_memory_bytes: Some(0),
            ..Default::default()
        };
        let c = ServerConfig::from_settings(off, Path::new("x"), exe.clone()).unwrap();
        assert!(c.load.check.is_none());
        let cases = [
            (
                ServerSettings {
                    keep_alive_timeout_s: Some(0),
                    ..Default::default()
                },
                "key 'keep_alive_timeout_s': must be at least 1",
            ),
            (
                ServerSettings {
                    max_connections: Some(0),
                    ..Default::default()
                },
                "key 'max_connections'",
            ),
            (
                ServerSettings {
                    max_body_bytes: Some(1 << 20),
                    max_buffered_body_bytes: Some(1 << 10),
                    ..Default::default()
                },
                "is below max_body_bytes",
            ),
            (
                ServerSettings {
                    model_load_memory_bytes: Some(1000),
                    ..Default::default()
                },
                "model_load_memory_bytes",
            ),
            (
                ServerSettings {
                    admin_token: Some("a".into()),
                    admin_token_file: Some("t".into()),
                    ..Default::default()
                },
                "keep one",
            ),
        ];
        for (settings, expected) in cases {
            let err = ServerConfig::from_settings(settings, Path::new("s.toml"), None).unwrap_err();
            assert!(err.to_string().contains(expected), "{err}");
        }
    }

    #[test]
    fn the_admin_token_comes_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "  s3cret\n").unwrap();
        let s = ServerSettings {
            admin_token_file: Some(file),
            protect_inference: Some(true),
            ..Default::default()
        };
        let c = ServerConfig::from_settings(s, Path::new("x"), None).unwrap();
        assert_eq!(c.admin_token.as_deref(), Some("s3cret"));
        let s = ServerSettings {
            admin_token_file: Some(dir.path().join("missing")),
            ..Default::default()
        };
        let err = ServerConfig::from_settings(s, Path::new("x"), None).unwrap_err();
        assert!(err.to_string().contains("cannot read"), "{err}");
    }

    #[test]
    fn the_feedback_token_is_set_like_the_admin_token() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("feedback");
        std::fs::write(&file, "outcomes\n").unwrap();
        let s = ServerSettings {
            feedback_token_file: Some(file.clone()),
            ..Default::default()
        };
        let c = ServerConfig::from_settings(s, Path::new("x"), None).unwrap();
        assert_eq!(c.feedback_token.as_deref(), Some("outcomes"));
        assert_eq!(c.admin_token, None);
        for (settings, expected) in [
            (
                ServerSettings {
                    feedback_token: Some("a".into()),
                    feedback_token_file: Some(file),
                    ..Default::default()
                },
                "key 'feedback_token_file': both feedback_token and feedback_token_file",
            ),
            (
                ServerSettings {
                    feedback_token: Some(" ".into()),
                    ..Default::default()
                },
                "key 'feedback_token': must not be empty",
            ),
        ] {
            let err = ServerConfig::from_settings(settings, Path::new("s.toml"), None).unwrap_err();
            assert!(err.to_string().contains(expected), "{err}");
        }
    }

    /// Each setting's default is stated three times: in code, in its `--help` text and in
    /// README's settings table. This holds the three together for every setting whose default
    /// is a plain value, so none of them can drift alone.
    #[test]
    fn defaults_agree_with_help_and_readme() {
        use clap::CommandFactory;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            settings: ServerSettings,
        }
        let readme = include_str!("../../README.md");
        let table: Vec<(String, String)> = readme
            .lines()
            .filter(|l| l.starts_with("| `"))
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                (cells.len() > 5).then(|| (cells[2].to_string(), cells[4].to_string()))
            })
            .collect();
        let c =
            ServerConfig::from_settings(ServerSettings::default(), Path::new("x"), None).unwrap();
        let effective: &[(&str, String)] = &[
            ("max-body-bytes", c.max_body_bytes.to_string()),
            (
                "shutdown-timeout-s",
                c.shutdown_timeout.as_secs().to_string(),
            ),
            ("max-connections", c.connections.max_connections.to_string()),
            (
                "max-buffered-body-bytes",
                c.connections.max_buffered_body_bytes.to_string(),
            ),
            (
                "header-read-timeout-s",
                c.connections.header_read_timeout.as_secs().to_string(),
            ),
            (
                "keep-alive-timeout-s",
                c.connections.keep_alive_timeout.as_secs().to_string(),
            ),
            (
                "body-read-timeout-s",
                c.connections.body_read_timeout.as_secs().to_string(),
            ),
            ("protect-inference", c.protect_inference.to_string()),
            ("max-training-jobs", c.training.max_jobs.to_string()),
        ];
        let mut checked = 0;
        for arg in Cli::command().get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            let help = arg
                .get_long_help()
                .or_else(|| arg.get_help())
                .map(|h| h.to_string())
                .unwrap_or_default()
                .replace('\n', " ");
            let Some(stated) = help
                .split("[default: ")
                .nth(1)
                .and_then(|rest| rest.split(']').next())
            else {
                continue;
            };
            let plain = |v: &str| {
                v.parse::<u64>().is_ok() || ["true", "false", "drop", "block"].contains(&v)
            };
            if !plain(stated) {
                continue;
            }
            let flag = format!("`--{long}`");
            if let Some((_, documented)) = table.iter().find(|(flags, _)| flags.contains(&flag)) {
                assert_eq!(documented, stated, "README's default of --{long}");
            }
            if let Some((_, value)) = effective.iter().find(|(name, _)| *name == long) {
                assert_eq!(value, stated, "the effective default of --{long}");
            }
            checked += 1;
        }
        assert!(checked >= 20, "only {checked} settings checked");
    }
}
