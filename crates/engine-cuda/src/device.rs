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
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, LaunchConfig,
    PinnedHostSlice, PushKernelArg,
};

use crate::plan::{Activation, Elem, HostValue, Place, Plan, Step};

/// A GPU the driver reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuInfo {
    pub ordinal: u32,
    pub name: String,
    pub memory_bytes: u64,
}

/// The libraries a run needs, looked for by name (their SONAMEs), without loading CUDA.
pub fn missing_libraries() -> Vec<&'static str> {
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
        return Err(format!("not found: {}", missing.join(", ")));
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

/// One version on one GPU.
pub struct DeviceModel {
    ctx: Arc<CudaContext>,
    kernels: Kernels,
    weights: Vec<StepWeights>,
    tf32: bool,
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
        let ptx = cudarc::nvrtc::compile_ptx(KERNELS).map_err(|e| err("NVRTC")(&e))?;
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
        Ok(DeviceModel {
            ctx,
            kernels,
            weights,
            tf32,
            gpu,
        })
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
        let mut s = DeviceSession {
            model,
            plan,
            stream,
            blas,
            rows_cap: 0,
            slots: Vec::new(),
            staging: Vec::new(),
            rows: 0,
        };
        s.reserve(1)?;
        Ok(s)
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
        }
        for (i, step) in plan.steps.iter().enumerate() {
            if step.place() == Place::Device {
                self.launch(i, step, rows)?;
            }
        }
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
                    HostValue::I64(host)
                }
            });
        }
        self.stream.synchronize().map_err(|e| err("the GPU")(&e))?;
        plan.finish_on_host(values, rows)
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
