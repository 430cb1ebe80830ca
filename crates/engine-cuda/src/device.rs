//! The plan on a GPU, through `cudarc` with dynamic loading: the driver, cuBLAS and NVRTC are
//! opened at run time, so the build needs no CUDA and a host without it gets an error, never a
//! panic (each library is looked for before cudarc touches it).
//!
//! Per version: weights and biases uploaded once, the kernels compiled once (NVRTC). Per
//! session (one per engine worker): a CUDA stream, a cuBLAS handle on it, the plan's device
//! slots and pinned staging buffers, grown to the largest batch seen (within a row limit). A
//! batch is one host→device copy per input (the batcher's parts gathered straight into the
//! pinned buffer), the steps (SGEMM, or TF32 when asked, plus fused epilogues), one
//! device→host copy per value the host needs, then the label tail on the host.

use std::sync::Arc;

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::CudaBlas;
use std::sync::atomic::{AtomicBool, Ordering};

use cairn_core::engine::DeviceWork;
use cudarc::driver::sys::{CUevent_flags, CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaGraph, CudaModule, CudaSlice, CudaStream, DevicePtr,
    LaunchConfig, PinnedHostSlice, PushKernelArg,
};

use crate::plan::{Activation, Elem, HostValue, Place, Plan, Step};

/// A GPU the driver reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuInfo {
    pub ordinal: u32,
    pub name: String,
    pub memory_bytes: u64,
}

/// The libraries a run needs, looked for by name (their SONAMEs), without loading CUDA; those
/// in the configured directories ([`crate::libraries`]) are opened first.
pub fn missing_libraries() -> Vec<&'static str> {
    crate::libraries::preload();
    let mut missing = Vec::new();
    // SAFETY: each only tries to open the library by name and closes it again.
    unsafe {
        if !cudarc::driver::sys::is_culib_present() {
            missing.push("libcuda.so (the NVIDIA driver)");
        }
        if !cudarc::cublas::sys::is_culib_present() {
            missing.push("libcublas.so (cuBLAS)");
        }
        if !cudarc::nvrtc::sys::is_culib_present() {
            missing.push("libnvrtc.so (NVRTC)");
        }
    }
    missing
}

/// The GPUs of this host, or why there are none to use.
pub fn discover() -> Result<Vec<GpuInfo>, String> {
    let missing = missing_libraries();
    if !missing.is_empty() {
        let hint = if missing.iter().any(|m| !m.starts_with("libcuda")) {
            " (pip's nvidia-cublas and nvidia-cuda-nvrtc CUDA 13 wheels have them: name their \
             directory in cuda_library_path)"
        } else {
            ""
        };
        return Err(format!("not found: {}{hint}", missing.join(", ")));
    }
    let count = CudaContext::device_count().map_err(|e| format!("the CUDA driver: {e}"))?;
    let mut gpus = Vec::new();
    for ordinal in 0..count.max(0) as usize {
        let ctx = CudaContext::new(ordinal).map_err(|e| format!("GPU {ordinal}: {e}"))?;
        gpus.push(GpuInfo {
            ordinal: ordinal as u32,
            name: ctx.name().map_err(|e| format!("GPU {ordinal}: {e}"))?,
            memory_bytes: ctx.total_mem().map_err(|e| format!("GPU {ordinal}: {e}"))? as u64,
        });
    }
    if gpus.is_empty() {
        return Err("the CUDA driver reports no GPU".into());
    }
    Ok(gpus)
}

const KERNELS: &str = r#"
extern "C" __device__ float cairn_act(float v, int act) {
    if (act == 1) return fmaxf(v, 0.0f);
    if (act == 2) return 1.0f / (1.0f + expf(-v));
    if (act == 3) return tanhf(v);
    return v;
}
extern "C" __global__ void bias_act(float* y, const float* bias, int has_bias, int act, int m, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = y[i];
    if (has_bias) v += bias[i % m];
    y[i] = cairn_act(v, act);
}
extern "C" __global__ void affine(const float* x, float* y, const float* scale, int ns, const float* offset, int no, int width, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int j = (int)(i % width);
    y[i] = x[i] * scale[ns == 1 ? 0 : j] + offset[no == 1 ? 0 : j];
}
extern "C" __global__ void activation(const float* x, float* y, int act, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    y[i] = cairn_act(x[i], act);
}
extern "C" __global__ void softmax_rows(const float* x, float* y, int width, int rows) {
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= rows) return;
    const float* xr = x + (long long)r * width;
    float* yr = y + (long long)r * width;
    float mx = __int_as_float(0xff800000);  // -inf, without a host header
    for (int j = 0; j < width; j++) mx = fmaxf(mx, xr[j]);
    float sum = 0.0f;
    for (int j = 0; j < width; j++) { float e = expf(xr[j] - mx); yr[j] = e; sum += e; }
    for (int j = 0; j < width; j++) yr[j] = yr[j] / sum;
}
extern "C" __global__ void concat_part(const float* x, int w, float* y, int out_w, int col, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    long long r = i / w;
    int j = (int)(i % w);
    y[r * out_w + col + j] = x[i];
}
extern "C" __global__ void argmax_rows(const float* x, long long* y, int width, int rows) {
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= rows) return;
    const float* xr = x + (long long)r * width;
    int best = 0;
    for (int j = 1; j < width; j++) if (xr[j] > xr[best]) best = j;
    y[r] = best;
}
"#;

/// The kernels' entry points, as [`KERNELS`] names them.
pub const KERNEL_NAMES: [&str; 6] = [
    "bias_act",
    "affine",
    "activation",
    "softmax_rows",
    "concat_part",
    "argmax_rows",
];

/// The kernels compiled to PTX by NVRTC: needs NVRTC only, no driver and no GPU, so the kernel
/// source is checked wherever NVRTC is found.
pub fn compile_kernels() -> Result<cudarc::nvrtc::Ptx, String> {
    crate::libraries::preload();
    // SAFETY: only opens the library by name and closes it again.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err("not found: libnvrtc.so (NVRTC)".into());
    }
    cudarc::nvrtc::compile_ptx(KERNELS).map_err(|e| err("NVRTC")(&e))
}

/// Most rows one batch may have on the device: the slots are sized by it.
pub const MAX_ROWS: usize = 1 << 20;

struct Kernels {
    bias_act: CudaFunction,
    affine: CudaFunction,
    activation: CudaFunction,
    softmax: CudaFunction,
    concat: CudaFunction,
    argmax: CudaFunction,
    _module: Arc<CudaModule>,
}

/// A step's constants on the device.
enum StepWeights {
    Gemm {
        w: CudaSlice<f32>,
        bias: Option<CudaSlice<f32>>,
    },
    Affine {
        scale: CudaSlice<f32>,
        offset: CudaSlice<f32>,
    },
    None,
}

/// Batches of up to this many rows run as a captured CUDA graph (one per power-of-two bucket);
/// larger ones launch step by step.
pub const GRAPH_MAX_ROWS: usize = 1 << 16;

/// cuBLAS's workspace per session, set by hand so that GEMMs captured in a graph never allocate
/// (32 MiB: what NVIDIA recommends for Hopper).
const CUBLAS_WORKSPACE_BYTES: usize = 32 << 20;

/// One version on one GPU.
pub struct DeviceModel {
    ctx: Arc<CudaContext>,
    kernels: Kernels,
    weights: Vec<StepWeights>,
    tf32: bool,
    /// Whether sessions run captured graphs: off with `CAIRN_CUDA_GRAPHS=off`, or once a capture
    /// failed or a graph disagreed with the step-by-step launches at load.
    graphs: AtomicBool,
    pub gpu: GpuInfo,
}

fn err(what: &str) -> impl Fn(&dyn std::fmt::Display) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl DeviceModel {
    pub fn load(plan: &Plan, ordinal: u32, tf32: bool) -> Result<DeviceModel, String> {
        let gpus = discover()?;
        let gpu = gpus
            .into_iter()
            .find(|g| g.ordinal == ordinal)
            .ok_or_else(|| format!("no GPU {ordinal} on this host"))?;
        let ctx = CudaContext::new(ordinal as usize).map_err(|e| err("context")(&e))?;
        // Each session works on one stream of its own, and the weights are synchronised before
        // any session reads them: cudarc's per-slice events would only cost time, and events
        // recorded outside a graph capture cannot be waited on inside one.
        // SAFETY: set before any slice of this context exists.
        unsafe { ctx.disable_event_tracking() };
        let ptx = compile_kernels()?;
        let module = ctx.load_module(ptx).map_err(|e| err("kernels")(&e))?;
        let f = |name: &str| module.load_function(name).map_err(|e| err(name)(&e));
        let kernels = Kernels {
            bias_act: f("bias_act")?,
            affine: f("affine")?,
            activation: f("activation")?,
            softmax: f("softmax_rows")?,
            concat: f("concat_part")?,
            argmax: f("argmax_rows")?,
            _module: module,
        };
        let stream = ctx.default_stream();
        let up = |v: &[f32]| stream.clone_htod(v).map_err(|e| err("weights")(&e));
        let mut weights = Vec::with_capacity(plan.steps.len());
        for step in &plan.steps {
            weights.push(match step {
                Step::Gemm { w, bias, .. } => StepWeights::Gemm {
                    w: up(w)?,
                    bias: bias.as_deref().map(up).transpose()?,
                },
                Step::Affine { scale, offset, .. } => StepWeights::Affine {
                    scale: up(scale)?,
                    offset: up(offset)?,
                },
                _ => StepWeights::None,
            });
        }
        stream.synchronize().map_err(|e| err("weights")(&e))?;
        let graphs = !matches!(
            std::env::var("CAIRN_CUDA_GRAPHS").as_deref(),
            Ok("off" | "0" | "false")
        );
        Ok(DeviceModel {
            ctx,
            kernels,
            weights,
            tf32,
            graphs: AtomicBool::new(graphs),
            gpu,
        })
    }

    /// Whether batches run as captured graphs.
    pub fn graphs(&self) -> bool {
        self.graphs.load(Ordering::Relaxed)
    }

    /// Stops every session of this version using graphs, saying why once.
    pub fn stop_graphs(&self, why: &str) {
        if self.graphs.swap(false, Ordering::Relaxed) {
            tracing::warn!(gpu = self.gpu.ordinal, reason = %why,
                "CUDA graphs off for this version; its steps are launched one by one");
        }
    }
}

/// One worker's device state.
pub struct DeviceSession {
    model: Arc<DeviceModel>,
    plan: Arc<Plan>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    /// Capacity in rows of the slots and staging buffers.
    rows_cap: usize,
    slots: Vec<CudaSlice<u8>>,
    staging: Vec<PinnedHostSlice<f32>>,
    rows: usize,
    /// Keeps cuBLAS off its own allocations (graph capture); alive as long as the handle.
    _workspace: CudaSlice<u8>,
    /// The captured steps per power-of-two bucket (index: log2 of the bucket's rows), valid
    /// while the slots are not reallocated.
    graphs: Vec<Option<OwnedGraph>>,
    /// Around the device steps: the kernel time of a batch.
    started: CudaEvent,
    finished: CudaEvent,
    last: DeviceWork,
    /// Launch step by step whatever the version's graphs setting (the load's check).
    steps_only: bool,
}

/// A graph one session owns alone.
struct OwnedGraph(CudaGraph);

// SAFETY: CUDA graphs are not internally synchronised, so no two threads may use one at once.
// An OwnedGraph is never shared: its session holds it and uses it from the one thread that runs
// the session at a time (a session moves to its engine worker; `Session` takes `&mut self`).
unsafe impl Send for OwnedGraph {}

impl Drop for DeviceSession {
    fn drop(&mut self) {
        // Nothing may still run on the stream when its slots, graphs and workspace are freed.
        let _ = self.stream.synchronize();
    }
}

impl DeviceSession {
    pub fn new(model: Arc<DeviceModel>, plan: Arc<Plan>) -> Result<DeviceSession, String> {
        let stream = model.ctx.new_stream().map_err(|e| err("stream")(&e))?;
        let blas = CudaBlas::new(stream.clone()).map_err(|e| err("cuBLAS")(&e))?;
        if model.tf32 {
            // SAFETY: the handle is live for the session; the mode only changes the math used.
            unsafe {
                cudarc::cublas::sys::cublasSetMathMode(
                    *blas.handle(),
                    cudarc::cublas::sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH,
                )
                .result()
                .map_err(|e| err("cuBLAS TF32")(&e))?;
            }
        }
        let workspace = stream
            .alloc_zeros::<u8>(CUBLAS_WORKSPACE_BYTES)
            .map_err(|e| err("cuBLAS workspace")(&e))?;
        {
            let (wp, _sync) = workspace.device_ptr(&stream);
            // SAFETY: the workspace outlives the handle (both are fields; it is dropped after
            // the stream is synchronised) and is used by nothing else.
            unsafe {
                cudarc::cublas::sys::cublasSetWorkspace_v2(
                    *blas.handle(),
                    wp as *mut std::ffi::c_void,
                    CUBLAS_WORKSPACE_BYTES,
                )
                .result()
                .map_err(|e| err("cuBLAS workspace")(&e))?;
            }
        }
        let timing = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let started = model.ctx.new_event(timing).map_err(|e| err("event")(&e))?;
        let finished = model.ctx.new_event(timing).map_err(|e| err("event")(&e))?;
        let mut s = DeviceSession {
            model,
            plan,
            stream,
            blas,
            rows_cap: 0,
            slots: Vec::new(),
            staging: Vec::new(),
            rows: 0,
            _workspace: workspace,
            graphs: Vec::new(),
            started,
            finished,
            last: DeviceWork::default(),
            steps_only: false,
        };
        s.reserve(1)?;
        Ok(s)
    }

    /// Captures the graphs of every bucket up to `rows` (at load, off the request path).
    pub fn capture_up_to(&mut self, rows: usize) -> Result<(), String> {
        let rows = rows.clamp(1, GRAPH_MAX_ROWS);
        self.reserve(rows)?;
        let mut bucket = 1;
        while bucket <= rows.next_power_of_two() && self.model.graphs() {
            self.graph(bucket)?;
            bucket *= 2;
        }
        Ok(())
    }

    /// The graph of `bucket` rows, captured on first use. Err: capture does not work here,
    /// and the caller launches step by step.
    fn graph(&mut self, bucket: usize) -> Result<&CudaGraph, String> {
        let at = bucket.trailing_zeros() as usize;
        if self.graphs.len() <= at {
            self.graphs.resize_with(at + 1, || None);
        }
        if self.graphs[at].is_none() {
            let graph = self.capture(bucket)?;
            self.graphs[at] = Some(OwnedGraph(graph));
        }
        Ok(&self.graphs[at].as_ref().expect("captured above").0)
    }

    fn capture(&self, rows: usize) -> Result<CudaGraph, String> {
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| err("graph capture")(&e))?;
        let launched = self.launch_steps(rows);
        // Always ends the capture, so the stream is usable again whatever happened.
        let ended = self.stream.end_capture(CUgraphInstantiate_flags(0));
        launched?;
        let graph = ended
            .map_err(|e| err("graph capture")(&e))?
            .ok_or("graph capture: nothing was captured")?;
        graph.upload().map_err(|e| err("graph upload")(&e))?;
        Ok(graph)
    }

    fn launch_steps(&self, rows: usize) -> Result<(), String> {
        for (i, step) in self.plan.steps.iter().enumerate() {
            if step.place() == Place::Device {
                self.launch(i, step, rows)?;
            }
        }
        Ok(())
    }

    /// What the last batch did on the device.
    pub fn last_work(&self) -> DeviceWork {
        self.last
    }

    /// Grows every slot and staging buffer to hold `rows` rows.
    fn reserve(&mut self, rows: usize) -> Result<(), String> {
        if rows <= self.rows_cap {
            return Ok(());
        }
        if rows > MAX_ROWS {
            return Err(format!(
                "a batch of {rows} rows is more than the CUDA engine's {MAX_ROWS}"
            ));
        }
        let cap = rows.next_power_of_two().min(MAX_ROWS);
        // Kernel grids and cuBLAS dimensions are 32-bit: no buffer may hold more elements.
        let widest = self.plan.buffers.iter().map(|b| b.width).max().unwrap_or(1);
        if cap.saturating_mul(widest) > i32::MAX as usize {
            return Err(format!(
                "a batch of {rows} rows of {widest} values is beyond the CUDA engine's 32-bit sizes"
            ));
        }
        let mut slots = Vec::with_capacity(self.plan.memory.slot_row_bytes.len());
        for &row_bytes in &self.plan.memory.slot_row_bytes {
            slots.push(
                self.stream
                    .alloc_zeros::<u8>(row_bytes * cap)
                    .map_err(|e| err("device memory")(&e))?,
            );
        }
        let mut staging = Vec::with_capacity(self.plan.inputs.len());
        for input in &self.plan.inputs {
            let width = self.plan.buffers[input.buffer].width;
            // SAFETY: the buffer is written before each copy that reads it.
            staging.push(unsafe {
                self.model
                    .ctx
                    .alloc_pinned::<f32>(width * cap)
                    .map_err(|e| err("pinned memory")(&e))?
            });
        }
        // The graphs name the old slots' addresses.
        self.graphs.clear();
        self.slots = slots;
        self.staging = staging;
        self.rows_cap = cap;
        Ok(())
    }

    /// The pinned staging buffer of input `i`, for `rows` rows: the batcher writes into it.
    pub fn stage(&mut self, i: usize, rows: usize) -> Result<&mut [f32], String> {
        self.reserve(rows)?;
        self.rows = rows;
        let width = self.plan.buffers[self.plan.inputs[i].buffer].width;
        let all = self.staging[i]
            .as_mut_slice()
            .map_err(|e| err("pinned memory")(&e))?;
        Ok(&mut all[..rows * width])
    }

    fn ptr(&self, buffer: usize) -> u64 {
        let slot = self.plan.memory.slot_of[buffer].expect("a device buffer has a slot");
        let (p, _sync) = self.slots[slot].device_ptr(&self.stream);
        p
    }

    /// Copies the staged inputs up, runs the device steps, copies back what the host needs,
    /// and runs the host steps. Outputs in plan order.
    pub fn run(&mut self) -> Result<Vec<HostValue>, String> {
        // cuBLAS and the launches use the context current on this (engine worker) thread.
        self.model
            .ctx
            .bind_to_thread()
            .map_err(|e| err("context")(&e))?;
        let rows = self.rows;
        let plan = Arc::clone(&self.plan);
        let mut work = DeviceWork::default();
        for (i, input) in plan.inputs.iter().enumerate() {
            let width = plan.buffers[input.buffer].width;
            let slot = plan.memory.slot_of[input.buffer].expect("inputs live on the device");
            let host = self.staging[i]
                .as_slice()
                .map_err(|e| err("pinned memory")(&e))?;
            let bytes = rows * width * 4;
            // SAFETY: the slot holds at least `bytes`; f32 and u8 have no invalid bit patterns.
            let mut dst = unsafe { self.slots[slot].transmute_mut::<f32>(rows * width) }
                .ok_or_else(|| format!("slot {slot} smaller than {bytes} bytes"))?;
            self.stream
                .memcpy_htod(&host[..rows * width], &mut dst)
                .map_err(|e| err("copy to the GPU")(&e))?;
            work.bytes_to_device += bytes as u64;
        }
        self.started
            .record(&self.stream)
            .map_err(|e| err("event")(&e))?;
        self.device_steps(rows)?;
        self.finished
            .record(&self.stream)
            .map_err(|e| err("event")(&e))?;
        let mut values: Vec<Option<HostValue>> = vec![None; plan.buffers.len()];
        for &b in &plan.memory.copied_back {
            let slot = plan.memory.slot_of[b].expect("copied back from the device");
            let n = rows * plan.buffers[b].width;
            values[b] = Some(match plan.buffers[b].elem {
                Elem::F32 => {
                    let mut host = vec![0f32; n];
                    // SAFETY: as above; the slot holds n f32 values of this buffer.
                    let src = unsafe { self.slots[slot].transmute::<f32>(n) }
                        .ok_or_else(|| format!("slot {slot} too small"))?;
                    self.stream
                        .memcpy_dtoh(&src, &mut host)
                        .map_err(|e| err("copy from the GPU")(&e))?;
                    work.bytes_from_device += (n * 4) as u64;
                    HostValue::F32(host)
                }
                Elem::I64 => {
                    let mut host = vec![0i64; n];
                    // SAFETY: as above, for i64.
                    let src = unsafe { self.slots[slot].transmute::<i64>(n) }
                        .ok_or_else(|| format!("slot {slot} too small"))?;
                    self.stream
                        .memcpy_dtoh(&src, &mut host)
                        .map_err(|e| err("copy from the GPU")(&e))?;
                    work.bytes_from_device += (n * 8) as u64;
                    HostValue::I64(host)
                }
            });
        }
        self.stream.synchronize().map_err(|e| err("the GPU")(&e))?;
        work.kernel_seconds = self
            .started
            .elapsed_ms(&self.finished)
            .map_err(|e| err("event")(&e))? as f64
            / 1e3;
        self.last = work;
        plan.finish_on_host(values, rows)
    }

    /// The device steps for `rows` rows: the bucket's graph (rows past `rows` in the bucket
    /// compute on stale data no one reads: every step works row by row), else step by step.
    fn device_steps(&mut self, rows: usize) -> Result<(), String> {
        if !self.steps_only && self.model.graphs() && rows <= GRAPH_MAX_ROWS {
            let bucket = rows.max(1).next_power_of_two();
            match self.graph(bucket) {
                Ok(graph) => {
                    return graph.launch().map_err(|e| err("graph launch")(&e));
                }
                Err(e) => self.model.stop_graphs(&e),
            }
        }
        self.launch_steps(rows)
    }

    /// Runs the batch last staged step by step, whatever the graphs setting (the load's check).
    pub fn run_without_graphs(&mut self) -> Result<Vec<HostValue>, String> {
        self.steps_only = true;
        let out = self.run();
        self.steps_only = false;
        out
    }

    /// Seconds per batch of `rows` rows for the plan's GEMMs alone (cuBLAS, no epilogues, no
    /// copies), over `iterations` runs: what the engine's floor is read against.
    pub fn time_gemms(&mut self, rows: usize, iterations: usize) -> Result<f64, String> {
        self.model
            .ctx
            .bind_to_thread()
            .map_err(|e| err("context")(&e))?;
        self.reserve(rows)?;
        self.rows = rows;
        let plan = Arc::clone(&self.plan);
        let gemms: Vec<(usize, Step)> = plan
            .steps
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                Step::Gemm {
                    x, w, k, m, out, ..
                } => Some((
                    i,
                    Step::Gemm {
                        x: *x,
                        w: w.clone(),
                        k: *k,
                        m: *m,
                        bias: None,
                        act: Activation::None,
                        out: *out,
                    },
                )),
                _ => None,
            })
            .collect();
        let pass = |s: &Self| -> Result<(), String> {
            for (i, step) in &gemms {
                s.sgemm(*i, step, rows)?;
            }
            Ok(())
        };
        pass(self)?;
        self.stream.synchronize().map_err(|e| err("the GPU")(&e))?;
        let t = std::time::Instant::now();
        for _ in 0..iterations {
            pass(self)?;
        }
        self.stream.synchronize().map_err(|e| err("the GPU")(&e))?;
        Ok(t.elapsed().as_secs_f64() / iterations.max(1) as f64)
    }

    fn sgemm(&self, i: usize, step: &Step, rows: usize) -> Result<(), String> {
        let (Step::Gemm { x, k, m, out, .. }, StepWeights::Gemm { w, .. }) =
            (step, &self.model.weights[i])
        else {
            return Err("not a GEMM".into());
        };
        let (wp, _s1) = w.device_ptr(&self.stream);
        let (xp, yp) = (self.ptr(*x), self.ptr(*out));
        let (alpha, beta) = (1.0f32, 0.0f32);
        // Row-major C[rows, m] = X[rows, k] · W[k, m] is column-major
        // Cᵀ[m, rows] = Wᵀ[m, k] · Xᵀ[k, rows]: no transposes, leading dims m, k, m.
        // SAFETY: the slots hold `rows` rows of their buffers' widths; the weight is k × m.
        unsafe {
            cudarc::cublas::result::sgemm(
                *self.blas.handle(),
                cublasOperation_t::CUBLAS_OP_N,
                cublasOperation_t::CUBLAS_OP_N,
                *m as i32,
                rows as i32,
                *k as i32,
                &alpha,
                wp as *const f32,
                *m as i32,
                xp as *const f32,
                *k as i32,
                &beta,
                yp as *mut f32,
                *m as i32,
            )
        }
        .map_err(|e| err("SGEMM")(&e))
    }

    fn launch(&self, i: usize, step: &Step, rows: usize) -> Result<(), String> {
        let k = &self.model.kernels;
        let grid = |n: usize| LaunchConfig::for_num_elems(n.max(1) as u32);
        // SAFETY (every launch): each pointer names a live slot or weight of at least the
        // sizes the kernel reads and writes for `rows` rows (the plan's widths).
        macro_rules! launch {
            ($f:expr, $cfg:expr, $($arg:expr),*) => {{
                let mut b = self.stream.launch_builder($f);
                $( b.arg($arg); )*
                unsafe { b.launch($cfg) }.map_err(|e| err(&step.label())(&e))?;
            }};
        }
        match (step, &self.model.weights[i]) {
            (Step::Gemm { m, act, out, .. }, StepWeights::Gemm { bias, .. }) => {
                self.sgemm(i, step, rows)?;
                let yp = self.ptr(*out);
                if bias.is_some() || *act != Activation::None {
                    let bp = bias
                        .as_ref()
                        .map(|b| b.device_ptr(&self.stream).0)
                        .unwrap_or(0);
                    let n = (rows * m) as i64;
                    let (has, a, mm) = (bias.is_some() as i32, act_code(*act), *m as i32);
                    launch!(&k.bias_act, grid(rows * m), &yp, &bp, &has, &a, &mm, &n);
                }
            }
            (Step::Affine { x, out, .. }, StepWeights::Affine { scale, offset }) => {
                let (sp, op) = (
                    scale.device_ptr(&self.stream).0,
                    offset.device_ptr(&self.stream).0,
                );
                let (xp, yp) = (self.ptr(*x), self.ptr(*out));
                let width = self.plan.buffers[*out].width;
                let (ns, no, w) = (scale.len() as i32, offset.len() as i32, width as i32);
                let n = (rows * width) as i64;
                launch!(
                    &k.affine,
                    grid(rows * width),
                    &xp,
                    &yp,
                    &sp,
                    &ns,
                    &op,
                    &no,
                    &w,
                    &n
                );
            }
            (Step::Activation { x, act, out }, _) => {
                let (xp, yp) = (self.ptr(*x), self.ptr(*out));
                let width = self.plan.buffers[*out].width;
                let (a, n) = (act_code(*act), (rows * width) as i64);
                launch!(&k.activation, grid(rows * width), &xp, &yp, &a, &n);
            }
            (Step::Softmax { x, out }, _) => {
                let (xp, yp) = (self.ptr(*x), self.ptr(*out));
                let (w, r) = (self.plan.buffers[*out].width as i32, rows as i32);
                launch!(&k.softmax, grid(rows), &xp, &yp, &w, &r);
            }
            (Step::Concat { xs, out }, _) => {
                let yp = self.ptr(*out);
                let out_w = self.plan.buffers[*out].width as i32;
                let mut col = 0i32;
                for &x in xs {
                    let xp = self.ptr(x);
                    let w = self.plan.buffers[x].width;
                    let (wi, n) = (w as i32, (rows * w) as i64);
                    let c = col;
                    launch!(&k.concat, grid(rows * w), &xp, &wi, &yp, &out_w, &c, &n);
                    col += w as i32;
                }
            }
            (Step::ArgMax { x, out }, _) => {
                let (xp, yp) = (self.ptr(*x), self.ptr(*out));
                let (w, r) = (self.plan.buffers[*x].width as i32, rows as i32);
                launch!(&k.argmax, grid(rows), &xp, &yp, &w, &r);
            }
            (step, _) => return Err(format!("'{}' has no device kernel", step.label())),
        }
        Ok(())
    }
}

fn act_code(a: Activation) -> i32 {
    match a {
        Activation::None => 0,
        Activation::Relu => 1,
        Activation::Sigmoid => 2,
        Activation::Tanh => 3,
    }
}
