//! The `cairn` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use cairn::config::{ServerConfig, ServerSettings};
use cairn::server::RunningServer;

/// A fast KServe V2 / Triton-compatible inference server.
#[derive(Parser)]
#[command(name = "cairn", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the models of a repository over HTTP (KServe V2 / Open Inference Protocol).
    Serve {
        /// Settings file; missing is fine unless given explicitly.
        #[arg(long, env = "CAIRN_CONFIG", default_value = "configs/server.toml")]
        config: PathBuf,
        #[command(flatten)]
        settings: Box<ServerSettings>,
    },
    /// Loads one model version in this process under a memory limit and reports the outcome
    /// (the server runs it for every load; the job arrives on standard input).
    #[command(name = "check-load", hide = true)]
    CheckLoad,
    /// Summarizes training or reference data into a `baseline.json` for drift monitoring.
    Baseline(Box<cairn::cli::offline::BaselineArgs>),
    /// Compares a window of data (a file, or a model's prediction log) with a baseline: the
    /// same drift report the server makes on live windows, as JSON or a self-contained HTML page.
    Drift(Box<cairn::cli::offline::DriftArgs>),
    /// Trains a model version from a training config (`configs/train/`): data prep, trials,
    /// ONNX export with the prep inside, a gate against the serving version, then publishes it.
    Train(Box<cairn::cli::training::TrainArgs>),
    /// The runs store: `list`, `show <id>`, `compare <id> <id>...`.
    Runs(Box<cairn::cli::training::RunsArgs>),
    /// On a GPU host: the GPU engines against the CPU on the shipped models (one-screen report;
    /// exit 2 when there is no GPU to test); `--bench` adds rows/s and p50/p99 per engine.
    #[cfg(feature = "cuda")]
    Selftest(Box<cairn::cli::selftest::SelftestArgs>),
}

fn main() -> ExitCode {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == cairn::model::load_check::SUBCOMMAND)
    {
        // No logging, no runtime, one thread: the check process only loads and answers.
        return cairn::model::load_check::child_main();
    }
    cairn::memory::configure_allocator(std::thread::available_parallelism().map_or(2, |n| n.get()));
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // Where a value came from, as clap saw it (`--config=x`, `--config x`, the environment).
    let given = |name: &str| {
        matches
            .subcommand_matches("serve")
            .and_then(|m| m.value_source(name))
    };
    let sources = Sources {
        config_explicit: matches!(
            given("config"),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ),
        token_in_argv: ["admin_token", "feedback_token"]
            .into_iter()
            .filter(|name| given(name) == Some(ValueSource::CommandLine))
            .collect(),
    };
    match cli.command {
        Command::Serve { config, settings } => match serve(config, *settings, sources) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("error: {message}");
                ExitCode::FAILURE
            }
        },
        Command::CheckLoad => cairn::model::load_check::child_main(),
        Command::Baseline(args) => offline(cairn::cli::offline::baseline(&args)),
        Command::Drift(args) => offline(cairn::cli::offline::drift(&args)),
        Command::Train(args) => train(&args),
        #[cfg(feature = "cuda")]
        Command::Selftest(args) => {
            let (report, outcome) = cairn::cli::selftest::run(&args);
            print!("{report}");
            match outcome {
                cairn::cli::selftest::Outcome::Passed => ExitCode::SUCCESS,
                cairn::cli::selftest::Outcome::Failed => ExitCode::FAILURE,
                cairn::cli::selftest::Outcome::NoGpu => ExitCode::from(2),
            }
        }
        Command::Runs(args) => match cairn::cli::training::runs(&args) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Exit status of an offline command: 0, 3 when asked to fail on drift and it drifted, 1 on an
/// error.
fn offline(
    result: Result<cairn::cli::offline::Outcome, cairn::cli::offline::OfflineError>,
) -> ExitCode {
    match result {
        Ok(cairn::cli::offline::Outcome::Done) => ExitCode::SUCCESS,
        Ok(cairn::cli::offline::Outcome::Drifted) => ExitCode::from(3),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `cairn train`: 0 when a version was published (or, with `--no-publish`, passed the gate), 4
/// when the gate refused it, 1 on an error.
fn train(args: &cairn::cli::training::TrainArgs) -> ExitCode {
    let bars = cairn::cli::training::Bars::new(args.quiet);
    let result = cairn::cli::training::train(&args.config, !args.no_publish, &bars);
    drop(bars);
    match result {
        Ok(r) => {
            let repo = r.outcome.record.config["output"]["repository"]
                .as_str()
                .map(PathBuf::from)
                .unwrap_or_default();
            print!(
                "{}",
                cairn::cli::training::summary(&r.outcome.record, r.published, &repo)
            );
            if r.outcome.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(4)
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where two settings came from.
struct Sources {
    /// `--config` or `CAIRN_CONFIG` was given: the file must exist.
    config_explicit: bool,
    /// Tokens (`admin_token`, `feedback_token`) given on the command line, where every local
    /// user can read them.
    token_in_argv: Vec<&'static str>,
}

fn serve(config_path: PathBuf, flags: ServerSettings, sources: Sources) -> Result<(), String> {
    let file = if config_path.exists() || sources.config_explicit {
        ServerSettings::from_file(&config_path).map_err(|e| e.to_string())?
    } else {
        ServerSettings::default()
    };
    // Checked loads re-run this executable with its hidden `check-load` command.
    let exe = std::env::current_exe().ok();
    let config = ServerConfig::from_settings(flags.or(file), &config_path, exe)
        .map_err(|e| e.to_string())?;
    cairn::listener::raise_fd_limit();
    if let Some(library) = &config.onnxruntime_library {
        cairn::engine::set_onnxruntime_library(library.clone());
    }
    if let Some(dirs) = &config.cuda_library_path {
        cairn::engine::set_cuda_library_path(dirs);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.http_threads)
        .thread_name("http")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let server = RunningServer::start(config.clone())
            .await
            .map_err(|e| match e.kind() {
                // Settings that cannot be served (the TLS files): the error names the file.
                std::io::ErrorKind::InvalidInput => format!("cannot start: {e}"),
                _ => format!("cannot listen on {}: {e}", config.listen),
            })?;
        for key in &sources.token_in_argv {
            let (flag, env) = (key.replace('_', "-"), key.to_uppercase());
            tracing::warn!(
                "the {key} given with --{flag} is visible to every local user in the process \
                 list; use CAIRN_{env} or --{flag}-file instead"
            );
        }
        tracing::info!(
            model_repository = %config.model_repository.display(),
            max_body_bytes = config.max_body_bytes,
            shutdown_timeout_s = config.shutdown_timeout.as_secs(),
            http_threads = config.http_threads,
            repository_poll_interval_s = config.repository_poll_interval.map_or(0, |d| d.as_secs()),
            state_dir = %config.state_dir.display(),
            admin_token = if config.admin_token.is_some() { "<set>" } else { "<unset>" },
            feedback_token = if config.feedback_token.is_some() { "<set>" } else { "<unset>" },
            protect_inference = config.protect_inference,
            max_connections = config.connections.max_connections,
            max_buffered_body_bytes = config.connections.max_buffered_body_bytes,
            header_read_timeout_s = config.connections.header_read_timeout.as_secs(),
            keep_alive_timeout_s = config.connections.keep_alive_timeout.as_secs(),
            body_read_timeout_s = config.connections.body_read_timeout.as_secs(),
            model_load_memory_bytes = config.load.check.as_ref().map_or(0, |c| c.memory_bytes),
            model_load_timeout_s = config.load.check.as_ref().map_or(0, |c| c.timeout.as_secs()),
            "effective settings"
        );
        cairn::engine::log_libraries();
        let stopper = server.stopper();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutdown signal received");
            let _ = stopper.send(true);
        });
        server.join().await;
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler cannot fail on Unix");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
