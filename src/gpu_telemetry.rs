//! GPU utilisation and memory in `/metrics`, read from NVML (the driver's `libnvidia-ml.so.1`,
//! opened at run time by `nvml-wrapper`) every few seconds on the blocking pool, never on a
//! scrape: the first NVML call can take a while, and a scrape must stay cheap. A host without
//! NVML (no driver, or a build without the `cuda` feature) exports no GPU series and says so in
//! one log line; nothing else changes.
//!
//! NVML's utilisation is the share of its own last sample period (1/6 s to 1 s, by GPU) in which
//! a kernel ran: a gauge sampled at this module's period, not an average over it.

use std::time::Duration;

use tokio::sync::watch;

use crate::metrics::Metrics;

/// How often the GPUs are read.
pub const PERIOD: Duration = Duration::from_secs(5);

/// One GPU's reading.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuSample {
    pub index: u32,
    pub name: String,
    /// 0 to 1.
    pub utilization: f64,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
}

/// Reads the GPUs every `period` into `metrics` until the server stops; returns at once where
/// NVML is not there.
pub async fn run(metrics: Metrics, period: Duration, stopped: watch::Receiver<bool>) {
    let opened = tokio::task::spawn_blocking(nvml::open).await;
    let reader = match opened {
        Ok(Ok(reader)) => std::sync::Arc::new(reader),
        Ok(Err(why)) => {
            tracing::info!("GPU metrics off: {why}");
            return;
        }
        Err(_) => return,
    };
    crate::periodic::every_blocking(period, crate::periodic::First::Now, stopped, move || {
        for s in &reader.sample() {
            metrics.set_gpu(s);
        }
    })
    .await
}

#[cfg(feature = "cuda")]
mod nvml {
    use std::sync::atomic::{AtomicBool, Ordering};

    use nvml_wrapper::Nvml;

    use super::GpuSample;

    pub struct Reader {
        nvml: Nvml,
        /// A failed reading is logged once, not every period.
        warned: AtomicBool,
    }

    pub fn open() -> Result<Reader, String> {
        let nvml = Nvml::init().map_err(|e| format!("NVML (libnvidia-ml.so.1): {e}"))?;
        let count = nvml
            .device_count()
            .map_err(|e| format!("NVML device count: {e}"))?;
        if count == 0 {
            return Err("NVML reports no GPU".into());
        }
        tracing::info!(gpus = count, "GPU metrics on (NVML)");
        Ok(Reader {
            nvml,
            warned: AtomicBool::new(false),
        })
    }

    impl Reader {
        pub fn sample(&self) -> Vec<GpuSample> {
            let count = self.nvml.device_count().unwrap_or(0);
            let mut out = Vec::with_capacity(count as usize);
            for index in 0..count {
                let read = || -> Result<GpuSample, nvml_wrapper::error::NvmlError> {
                    let device = self.nvml.device_by_index(index)?;
                    let utilization = device.utilization_rates()?;
                    let memory = device.memory_info()?;
                    Ok(GpuSample {
                        index,
                        name: device.name()?,
                        utilization: f64::from(utilization.gpu) / 100.0,
                        memory_used_bytes: memory.used,
                        memory_total_bytes: memory.total,
                    })
                };
                match read() {
                    Ok(s) => out.push(s),
                    Err(e) => {
                        if !self.warned.swap(true, Ordering::Relaxed) {
                            tracing::warn!(gpu = index, error = %e, "cannot read the GPU from NVML");
                        }
                    }
                }
            }
            out
        }
    }
}

#[cfg(not(feature = "cuda"))]
mod nvml {
    use super::GpuSample;

    pub struct Reader;

    pub fn open() -> Result<Reader, String> {
        Err("this build has no GPU support (built without the 'cuda' feature)".into())
    }

    impl Reader {
        pub fn sample(&self) -> Vec<GpuSample> {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_nvml_it_returns_at_once_and_exports_nothing() {
        if nvml::open().is_ok() {
            return; // a GPU host: covered by the sampler's own series
        }
        let metrics = Metrics::new();
        let (_stop, stopped) = watch::channel(false);
        // Returns without being stopped: nothing to sample.
        tokio::time::timeout(
            Duration::from_secs(30),
            run(metrics.clone(), PERIOD, stopped),
        )
        .await
        .expect("the sampler returns where there is no NVML");
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(!text.contains("cairn_gpu_"), "{text}");
    }

    #[test]
    fn a_sample_becomes_the_gpu_series() {
        let metrics = Metrics::new();
        metrics.set_gpu(&GpuSample {
            index: 0,
            name: "NVIDIA H200".into(),
            utilization: 0.42,
            memory_used_bytes: 3 << 30,
            memory_total_bytes: 141 << 30,
        });
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(text.contains("cairn_gpu_utilization_ratio{gpu=\"0\",name=\"NVIDIA H200\"} 0.42"));
        assert!(text.contains(&format!(
            "cairn_gpu_memory_used_bytes{{gpu=\"0\"}} {}",
            3u64 << 30
        )));
        assert!(text.contains(&format!(
            "cairn_gpu_memory_total_bytes{{gpu=\"0\"}} {}",
            141u64 << 30
        )));
    }
}
