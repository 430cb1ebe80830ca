//! The checked load: before a version loads in the server, the same load (parse, optimise,
//! reconcile, warm up) runs in a child process, `cairn check-load`, whose address space is
//! limited by `setrlimit`. A model file that would make the engine materialise gigabytes
//! (constant folding of an `Expand` or `ConstantOfShape`, a huge initializer), overflow the
//! stack or abort then kills only that child, and the load fails with the reason while what
//! serves keeps serving.
//!
//! A child process is the only bound that holds for every path through the engine: tract checks
//! some sizes, not all, and an allocation that fails inside the server would abort it. The cost
//! is a second load of each version (measured in benches/README.md).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::LoadError;
use crate::config::{LoadCheck, ModelConfig};

/// The name of the hidden subcommand that runs a checked load.
pub const SUBCOMMAND: &str = "check-load";

/// What the child is asked to load, sent as JSON on its standard input.
#[derive(Serialize, Deserialize)]
struct CheckJob {
    model_file: PathBuf,
    config: ModelConfig,
    memory_bytes: u64,
    max_sample_bytes: usize,
}

/// The child's answer on its standard output; an abnormal exit means it crashed.
#[derive(Serialize, Deserialize)]
struct Verdict {
    error: Option<String>,
}

/// Output kept from the child; the rest is discarded.
const OUTPUT_LIMIT: u64 = 64 << 10;
/// A job is a path and a config; anything larger is not one.
const MAX_JOB_BYTES: u64 = 4 << 20;

/// Runs the checked load of `model_file` and returns its verdict.
pub fn run(
    check: &LoadCheck,
    model_file: &Path,
    config: &ModelConfig,
    max_sample_bytes: usize,
) -> Result<(), LoadError> {
    run_child(check, model_file, config, max_sample_bytes).map_err(LoadError::Check)
}

fn run_child(
    check: &LoadCheck,
    model_file: &Path,
    config: &ModelConfig,
    max_sample_bytes: usize,
) -> Result<(), String> {
    let job = serde_json::to_vec(&CheckJob {
        model_file: model_file.to_path_buf(),
        config: config.clone(),
        memory_bytes: check.memory_bytes,
        max_sample_bytes,
    })
    .expect("a check job serializes");
    let mut child = Command::new(&check.exe)
        .arg(SUBCOMMAND)
        .env("RUST_BACKTRACE", "0")
        .env_remove("RUST_LOG")
        .envs(crate::engine::child_environment())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the load check ({}): {e}", check.exe.display()))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let out = std::thread::spawn(move || keep_head(stdout));
    let err = std::thread::spawn(move || keep_head(stderr));
    // A child that dies before reading its job closes the pipe; its exit says why.
    let _ = stdin.write_all(&job);
    drop(stdin);

    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(format!("cannot wait for the load check: {e}")),
        }
        if started.elapsed() >= check.timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "the load took longer than {} s (model_load_timeout_s) and was stopped",
                check.timeout.as_secs()
            ));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if let Ok(verdict) = serde_json::from_slice::<Verdict>(&stdout) {
        if status.success() {
            return verdict.error.map_or(Ok(()), Err);
        }
    }
    Err(crash_reason(
        check,
        status,
        &String::from_utf8_lossy(&stderr),
    ))
}

/// The child's side: reads the job, limits its own address space, loads, answers.
pub fn child_main() -> ExitCode {
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().take(MAX_JOB_BYTES).read_to_end(&mut input) {
        eprintln!("cannot read the load check job: {e}");
        return ExitCode::FAILURE;
    }
    let job: CheckJob = match serde_json::from_slice(&input) {
        Ok(job) => job,
        Err(e) => {
            eprintln!("not a load check job: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = limit_address_space(job.memory_bytes) {
        eprintln!("cannot limit the load check's memory: {e}");
        return ExitCode::FAILURE;
    }
    // A panic is reported in the verdict, not as a backtrace on stderr.
    std::panic::set_hook(Box::new(|_| {}));
    let config = on_the_cpu(job.config);
    let result = super::prepare_guarded(
        &job.model_file,
        &config,
        job.max_sample_bytes,
        Some(job.memory_bytes),
    );
    let verdict = Verdict {
        error: result.err().map(|e| e.to_string()),
    };
    let mut stdout = std::io::stdout().lock();
    let written = serde_json::to_writer(&mut stdout, &verdict)
        .map_err(std::io::Error::from)
        .and_then(|()| stdout.flush());
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

/// A GPU engine cannot start under the address-space limit (the CUDA driver reserves far more
/// virtual memory than any budget), so the child checks a GPU model on tract: the same file
/// parsed, optimised and warmed up on the CPU. The GPU load itself then runs in the server.
fn on_the_cpu(mut config: ModelConfig) -> ModelConfig {
    use crate::config::{EngineKind, Precision, Provider};
    let e = &mut config.engine;
    let gpu_provider = e
        .providers
        .iter()
        .any(|p| matches!(p, Provider::Cuda | Provider::Tensorrt));
    if e.kind == EngineKind::Cuda || (e.kind == EngineKind::Ort && gpu_provider) {
        e.kind = EngineKind::Tract;
        e.providers.clear();
        e.devices.clear();
        e.precision = Precision::Fp32;
        e.cache_dir = None;
    }
    config
}

/// Why a child that gave no verdict ended, in words an operator can act on.
fn crash_reason(check: &LoadCheck, status: std::process::ExitStatus, stderr: &str) -> String {
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    if stderr.contains("memory allocation of") || stderr.contains("out of memory") {
        return format!(
            "loading the model needs more memory than the budget of {} bytes \
             (model_load_memory_bytes): {last}",
            check.memory_bytes
        );
    }
    if stderr.contains("has overflowed its stack") {
        return "loading the model overflowed the stack (the graph is too deep)".into();
    }
    let how = signal_name(status).unwrap_or_else(|| status.to_string());
    if last.is_empty() {
        format!("the load check process ended abnormally ({how})")
    } else {
        format!("the load check process ended abnormally ({how}): {last}")
    }
}

#[cfg(unix)]
fn signal_name(status: std::process::ExitStatus) -> Option<String> {
    use std::os::unix::process::ExitStatusExt;
    status.signal().map(|s| match s {
        libc::SIGABRT => "aborted".to_string(),
        libc::SIGKILL => "killed".to_string(),
        libc::SIGSEGV => "segmentation fault".to_string(),
        other => format!("signal {other}"),
    })
}

#[cfg(not(unix))]
fn signal_name(_status: std::process::ExitStatus) -> Option<String> {
    None
}

/// Reads a pipe to its end, keeping the first [`OUTPUT_LIMIT`] bytes.
fn keep_head(mut pipe: impl Read) -> Vec<u8> {
    let mut kept = Vec::new();
    let _ = (&mut pipe).take(OUTPUT_LIMIT).read_to_end(&mut kept);
    let _ = std::io::copy(&mut pipe, &mut std::io::sink());
    kept
}

#[cfg(unix)]
fn limit_address_space(bytes: u64) -> std::io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: bytes as libc::rlim_t,
        rlim_max: bytes as libc::rlim_t,
    };
    // SAFETY: setrlimit reads the struct we pass and changes only this process's limits.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) };
    if rc == 0 {
        // No core file of a model that blew its budget.
        let none = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        unsafe { libc::setrlimit(libc::RLIMIT_CORE, &none) };
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(unix))]
fn limit_address_space(_bytes: u64) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{EngineKind, Provider};

    fn config(toml_text: &str) -> ModelConfig {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("m")).unwrap();
        std::fs::write(dir.path().join("m/config.toml"), toml_text).unwrap();
        ModelConfig::load(&dir.path().join("m"), "m").unwrap()
    }

    #[test]
    fn gpu_engines_are_checked_on_the_cpu_and_cpu_engines_as_they_are() {
        let c = on_the_cpu(config(
            "[engine]\nkind = \"cuda\"\nprecision = \"tf32\"\ndevices = [1]\n",
        ));
        assert_eq!(c.engine.kind, EngineKind::Tract);
        assert!(c.engine.devices.is_empty());
        let c = on_the_cpu(config(
            "[engine]\nkind = \"ort\"\nproviders = [\"cuda\", \"cpu\"]\n",
        ));
        assert_eq!(c.engine.kind, EngineKind::Tract);
        let c = on_the_cpu(config("[engine]\nkind = \"ort\"\nthreads = 2\n"));
        assert_eq!(c.engine.kind, EngineKind::Ort);
        assert_eq!(c.engine.providers, Vec::<Provider>::new());
        let c = on_the_cpu(config("[engine]\nkind = \"auto\"\n"));
        assert_eq!(c.engine.kind, EngineKind::Auto);
    }
}
