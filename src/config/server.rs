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

    /// Directory holding `<model>/config.toml` and `<model>/<version>/model.onnx`.
    /// [default: models]
    #[arg(long, env = "CAIRN_MODEL_REPOSITORY", value_name = "DIR")]
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
    /// versions; 0 turns polling off (loads then happen only through the API). [default: 0]
    #[arg(long, env = "CAIRN_REPOSITORY_POLL_INTERVAL_S", value_name = "SECONDS")]
    pub repository_poll_interval_s: Option<u64>,

    /// Directory for state that must survive a restart (deployments).
    /// [default: <model_repository>/.cairn]
    #[arg(long, env = "CAIRN_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Bearer token required by the management endpoints (repository, deployments). Unset, they
    /// are open: set it wherever the port is reachable by more than its operators.
    #[arg(
        long,
        env = "CAIRN_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,

    /// Require the admin token on inference too. [default: false]
    #[arg(long, env = "CAIRN_PROTECT_INFERENCE", value_name = "BOOL")]
    pub protect_inference: Option<bool>,
}

impl ServerSettings {
    /// Reads a settings file.
    pub fn from_file(path: &Path) -> Result<ServerSettings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Fills every unset field of `self` from `lower`.
    pub fn or(self, lower: ServerSettings) -> ServerSettings {
        ServerSettings {
            listen: self.listen.or(lower.listen),
            model_repository: self.model_repository.or(lower.model_repository),
            max_body_bytes: self.max_body_bytes.or(lower.max_body_bytes),
            shutdown_timeout_s: self.shutdown_timeout_s.or(lower.shutdown_timeout_s),
            http_threads: self.http_threads.or(lower.http_threads),
            repository_poll_interval_s: self
                .repository_poll_interval_s
                .or(lower.repository_poll_interval_s),
            state_dir: self.state_dir.or(lower.state_dir),
            admin_token: self.admin_token.or(lower.admin_token),
            protect_inference: self.protect_inference.or(lower.protect_inference),
        }
    }
}

/// The effective settings, defaults applied and values checked.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: String,
    pub model_repository: PathBuf,
    pub max_body_bytes: usize,
    pub shutdown_timeout: Duration,
    pub http_threads: usize,
    /// `None`: no polling.
    pub repository_poll_interval: Option<Duration>,
    pub state_dir: PathBuf,
    pub admin_token: Option<String>,
    pub protect_inference: bool,
}

impl ServerConfig {
    /// Applies defaults. `origin` names where the settings came from, for error messages.
    pub fn from_settings(s: ServerSettings, origin: &Path) -> Result<ServerConfig, ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            path: origin.to_path_buf(),
            key: key.into(),
            reason,
        };
        let max_body_bytes = s.max_body_bytes.unwrap_or(64 << 20);
        if max_body_bytes < 1024 {
            return Err(invalid(
                "max_body_bytes",
                format!("{max_body_bytes} is too small to hold a request (at least 1024)"),
            ));
        }
        let http_threads = s
            .http_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
        if http_threads == 0 {
            return Err(invalid("http_threads", "must be at least 1".into()));
        }
        if s.admin_token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return Err(invalid("admin_token", "must not be empty".into()));
        }
        if s.protect_inference == Some(true) && s.admin_token.is_none() {
            return Err(invalid(
                "protect_inference",
                "is true but no admin_token is set to protect it with".into(),
            ));
        }
        let model_repository = s
            .model_repository
            .unwrap_or_else(|| PathBuf::from("models"));
        Ok(ServerConfig {
            listen: s.listen.unwrap_or_else(|| "0.0.0.0:8000".into()),
            state_dir: s
                .state_dir
                .unwrap_or_else(|| model_repository.join(".cairn")),
            model_repository,
            max_body_bytes,
            shutdown_timeout: Duration::from_secs(s.shutdown_timeout_s.unwrap_or(30)),
            http_threads,
            repository_poll_interval: s
                .repository_poll_interval_s
                .filter(|&s| s > 0)
                .map(Duration::from_secs),
            admin_token: s.admin_token,
            protect_inference: s.protect_inference.unwrap_or(false),
        })
    }

    /// Settings for tests and embedding: everything default but the repository, on a free
    /// loopback port.
    pub fn for_repository(dir: &Path) -> ServerConfig {
        ServerConfig {
            listen: "127.0.0.1:0".into(),
            model_repository: dir.to_path_buf(),
            max_body_bytes: 64 << 20,
            shutdown_timeout: Duration::from_secs(30),
            http_threads: 2,
            repository_poll_interval: None,
            state_dir: dir.join(".cairn"),
            admin_token: None,
            protect_inference: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_and_defaults() {
        let file: ServerSettings = toml::from_str(
            "listen = \"127.0.0.1:9000\"\nmax_body_bytes = 2048\nmodel_repository = \"repo\"",
        )
        .unwrap();
        let flags = ServerSettings {
            listen: Some("127.0.0.1:0".into()),
            ..Default::default()
        };
        let c = ServerConfig::from_settings(flags.or(file), Path::new("x.toml")).unwrap();
        assert_eq!(c.listen, "127.0.0.1:0");
        assert_eq!(c.max_body_bytes, 2048);
        assert_eq!(c.model_repository, PathBuf::from("repo"));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(30));
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
        let err = ServerConfig::from_settings(s, Path::new("configs/server.toml")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "configs/server.toml: key 'max_body_bytes': 10 is too small to hold a request (at least 1024)"
        );
    }
}
