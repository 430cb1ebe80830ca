//! The trainer: dense networks (no hidden layer: logistic or linear regression; hidden ReLU
//! layers: an MLP) fitted by mini-batch AdamW on candle's CPU tensors, with an L2 penalty on the
//! weights and early stopping on the validation loss.
//!
//! Determinism: the initial weights and every epoch's batch order come from [`Rng`], and candle's
//! CPU kernels reduce in a fixed order, so the same data, settings and seed give bit-identical
//! weights. Weights are `[out, in]` as candle's `Linear` keeps them (exported as
//! `Gemm(transB = 1)`).

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use serde::{Deserialize, Serialize};

use crate::rng::Rng;

/// What the network predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Two classes, one logit: p(class 1) = sigmoid(z).
    Binary,
    /// Softmax over the classes.
    Multiclass { classes: usize },
    /// One value (the standardised target).
    Regression,
}

impl Task {
    fn outputs(self) -> usize {
        match self {
            Task::Binary | Task::Regression => 1,
            Task::Multiclass { classes } => classes,
        }
    }
}

/// One trial's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hyper {
    pub learning_rate: f64,
    pub l2: f64,
    pub hidden: Vec<usize>,
    pub epochs: usize,
    pub batch_size: usize,
    pub patience: usize,
}

/// Prepared rows and their targets.
pub struct Examples<'a> {
    /// Row-major `[rows, width]`.
    pub x: &'a [f32],
    pub width: usize,
    /// Class index per row (classification).
    pub classes: &'a [u32],
    /// Standardised target per row (regression).
    pub values: &'a [f32],
    /// Sample weight per row.
    pub weights: &'a [f32],
}

impl Examples<'_> {
    pub fn rows(&self) -> usize {
        self.weights.len()
    }
}

/// One dense layer, `w` row-major `[out, in]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Layer {
    pub inputs: usize,
    pub outputs: usize,
    pub w: Vec<f32>,
    pub b: Vec<f32>,
}

/// A fitted network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Network {
    pub task: Task,
    pub layers: Vec<Layer>,
}

/// One epoch's figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Epoch {
    pub epoch: usize,
    pub train_loss: f64,
    pub validation_loss: f64,
    /// Accuracy for a classifier; RMSE of the standardised target for a regressor.
    pub validation_metric: f64,
}

/// A finished fit: the weights of the best validation epoch.
#[derive(Clone, Debug)]
pub struct Fit {
    pub network: Network,
    pub epochs: Vec<Epoch>,
    pub best_epoch: usize,
    pub best_validation_loss: f64,
    pub stopped_early: bool,
}

/// Fits a network of `hyper` to `train`, stopping on `validation`. `on_epoch` sees every epoch
/// (progress bars, job status); returning `false` cancels the fit.
pub fn fit(
    task: Task,
    hyper: &Hyper,
    train: &Examples<'_>,
    validation: &Examples<'_>,
    seed: u64,
    on_epoch: &mut dyn FnMut(&Epoch) -> bool,
) -> Result<Fit, String> {
    fit_inner(task, hyper, train, validation, seed, on_epoch).map_err(|e| e.to_string())
}

fn fit_inner(
    task: Task,
    hyper: &Hyper,
    train: &Examples<'_>,
    validation: &Examples<'_>,
    seed: u64,
    on_epoch: &mut dyn FnMut(&Epoch) -> bool,
) -> candle_core::Result<Fit> {
    let dev = Device::Cpu;
    let mut rng = Rng::derive(seed, 1);
    let mut sizes = vec![train.width];
    sizes.extend(&hyper.hidden);
    sizes.push(task.outputs());
    let mut vars = Vec::new();
    for pair in sizes.windows(2) {
        let (inputs, outputs) = (pair[0], pair[1]);
        let limit = (6.0 / (inputs + outputs) as f64).sqrt();
        let w: Vec<f32> = (0..inputs * outputs)
            .map(|_| rng.uniform(-limit, limit) as f32)
            .collect();
        vars.push((
            Var::from_vec(w, (outputs, inputs), &dev)?,
            Var::from_vec(vec![0f32; outputs], outputs, &dev)?,
        ));
    }
    let params = ParamsAdamW {
        lr: hyper.learning_rate,
        weight_decay: 0.0,
        ..ParamsAdamW::default()
    };
    let mut opt = AdamW::new(
        vars.iter()
            .flat_map(|(w, b)| [w.clone(), b.clone()])
            .collect(),
        params,
    )?;
    let mut order: Vec<usize> = (0..train.rows()).collect();
    let mut epochs = Vec::new();
    let mut best = (f64::INFINITY, 0usize, snapshot(task, &vars)?);
    let mut stopped_early = false;
    for epoch in 1..=hyper.epochs {
        rng.shuffle(&mut order);
        let mut loss_sum = 0.0;
        for chunk in order.chunks(hyper.batch_size) {
            let batch = gather(train, chunk, &dev, task)?;
            let data = loss(task, &forward(&vars, &batch.x)?, &batch)?;
            let mut total = data.clone();
            if hyper.l2 > 0.0 {
                for (w, _) in &vars {
                    total = (total + (w.as_tensor().sqr()?.sum_all()? * (hyper.l2 / 2.0))?)?;
                }
            }
            opt.backward_step(&total)?;
            loss_sum += data.to_scalar::<f32>()? as f64 * chunk.len() as f64;
        }
        let (validation_loss, validation_metric) = evaluate(task, &vars, validation, &dev)?;
        let record = Epoch {
            epoch,
            train_loss: loss_sum / train.rows().max(1) as f64,
            validation_loss,
            validation_metric,
        };
        let go_on = on_epoch(&record);
        epochs.push(record);
        if validation_loss < best.0 - 1e-7 {
            best = (validation_loss, epoch, snapshot(task, &vars)?);
        } else if hyper.patience > 0 && epoch - best.1 >= hyper.patience {
            stopped_early = true;
            break;
        }
        if !go_on {
            return Err(candle_core::Error::Msg("cancelled".into()));
        }
    }
    if best.1 == 0 {
        // No epoch had a finite validation loss: keep the last weights, say so in the record.
        best.2 = snapshot(task, &vars)?;
    }
    Ok(Fit {
        network: best.2,
        epochs,
        best_epoch: best.1,
        best_validation_loss: best.0,
        stopped_early,
    })
}

struct Batch {
    x: Tensor,
    /// `[B, C]` one-hot × weight (multiclass), or `[B]` labels / values.
    y: Tensor,
    w: Tensor,
    weight_sum: f64,
}

fn gather(
    ex: &Examples<'_>,
    rows: &[usize],
    dev: &Device,
    task: Task,
) -> candle_core::Result<Batch> {
    let mut x = Vec::with_capacity(rows.len() * ex.width);
    for &i in rows {
        x.extend_from_slice(&ex.x[i * ex.width..(i + 1) * ex.width]);
    }
    let w: Vec<f32> = rows.iter().map(|&i| ex.weights[i]).collect();
    let weight_sum = w.iter().map(|v| *v as f64).sum::<f64>();
    let y = match task {
        Task::Multiclass { classes } => {
            let mut y = vec![0f32; rows.len() * classes];
            for (k, &i) in rows.iter().enumerate() {
                y[k * classes + ex.classes[i] as usize] = ex.weights[i];
            }
            Tensor::from_vec(y, (rows.len(), classes), dev)?
        }
        Task::Binary => {
            let y: Vec<f32> = rows.iter().map(|&i| ex.classes[i] as f32).collect();
            Tensor::from_vec(y, rows.len(), dev)?
        }
        Task::Regression => {
            let y: Vec<f32> = rows.iter().map(|&i| ex.values[i]).collect();
            Tensor::from_vec(y, rows.len(), dev)?
        }
    };
    Ok(Batch {
        x: Tensor::from_vec(x, (rows.len(), ex.width), dev)?,
        y,
        w: Tensor::from_vec(w, rows.len(), dev)?,
        weight_sum,
    })
}

fn forward(vars: &[(Var, Var)], x: &Tensor) -> candle_core::Result<Tensor> {
    let mut h = x.clone();
    for (k, (w, b)) in vars.iter().enumerate() {
        h = h
            .matmul(&w.as_tensor().t()?)?
            .broadcast_add(b.as_tensor())?;
        if k + 1 < vars.len() {
            h = h.relu()?;
        }
    }
    Ok(h)
}

/// The weighted mean loss of a batch: cross-entropy, logistic loss or squared error.
fn loss(task: Task, out: &Tensor, batch: &Batch) -> candle_core::Result<Tensor> {
    let denom = batch.weight_sum.max(f64::MIN_POSITIVE);
    match task {
        Task::Multiclass { .. } => {
            let logp = candle_nn::ops::log_softmax(out, D::Minus1)?;
            (logp * &batch.y)?.sum_all()?.affine(-1.0 / denom, 0.0)
        }
        Task::Binary => {
            let z = out.squeeze(1)?;
            // max(z, 0) - z·y + log(1 + e^-|z|): the logistic loss without overflow.
            let l = ((z.relu()? - (&z * &batch.y)?)? + (z.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
            (l * &batch.w)?.sum_all()?.affine(1.0 / denom, 0.0)
        }
        Task::Regression => {
            let d = (out.squeeze(1)? - &batch.y)?;
            (d.sqr()? * &batch.w)?.sum_all()?.affine(1.0 / denom, 0.0)
        }
    }
}

/// Loss and metric over a whole set, in chunks so memory stays bounded.
fn evaluate(
    task: Task,
    vars: &[(Var, Var)],
    ex: &Examples<'_>,
    dev: &Device,
) -> candle_core::Result<(f64, f64)> {
    let rows: Vec<usize> = (0..ex.rows()).collect();
    let (mut loss_sum, mut weight_sum, mut hits, mut sq) = (0.0, 0.0, 0usize, 0.0);
    for chunk in rows.chunks(4096) {
        let batch = gather(ex, chunk, dev, task)?;
        let out = forward(vars, &batch.x)?;
        loss_sum += loss(task, &out, &batch)?.to_scalar::<f32>()? as f64 * batch.weight_sum;
        weight_sum += batch.weight_sum;
        match task {
            Task::Multiclass { .. } => {
                let pred = out
                    .argmax(D::Minus1)?
                    .to_dtype(DType::U32)?
                    .to_vec1::<u32>()?;
                hits += chunk
                    .iter()
                    .zip(pred)
                    .filter(|(&i, p)| ex.classes[i] == *p)
                    .count();
            }
            Task::Binary => {
                let z = out.squeeze(1)?.to_vec1::<f32>()?;
                hits += chunk
                    .iter()
                    .zip(z)
                    .filter(|(&i, z)| ex.classes[i] == u32::from(*z > 0.0))
                    .count();
            }
            Task::Regression => {
                let p = out.squeeze(1)?.to_vec1::<f32>()?;
                sq += chunk
                    .iter()
                    .zip(p)
                    .map(|(&i, p)| ((p - ex.values[i]) as f64).powi(2))
                    .sum::<f64>();
            }
        }
    }
    let n = ex.rows().max(1) as f64;
    let metric = match task {
        Task::Regression => (sq / n).sqrt(),
        _ => hits as f64 / n,
    };
    Ok((loss_sum / weight_sum.max(f64::MIN_POSITIVE), metric))
}

fn snapshot(task: Task, vars: &[(Var, Var)]) -> candle_core::Result<Network> {
    let layers = vars
        .iter()
        .map(|(w, b)| {
            let (outputs, inputs) = w.as_tensor().dims2()?;
            Ok(Layer {
                inputs,
                outputs,
                w: w.as_tensor().flatten_all()?.to_vec1::<f32>()?,
                b: b.as_tensor().to_vec1::<f32>()?,
            })
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Network { task, layers })
}

impl Network {
    /// The raw outputs (logits, or the standardised value) of prepared rows, in plain Rust:
    /// what the run record's metrics and the tests use.
    pub fn logits(&self, x: &[f32], width: usize) -> Vec<f32> {
        let rows = x.len() / width.max(1);
        let mut h = x.to_vec();
        let mut w_in = width;
        for (k, layer) in self.layers.iter().enumerate() {
            let mut out = vec![0f32; rows * layer.outputs];
            for r in 0..rows {
                let row = &h[r * w_in..(r + 1) * w_in];
                for o in 0..layer.outputs {
                    let wrow = &layer.w[o * layer.inputs..(o + 1) * layer.inputs];
                    let mut s = 0f32;
                    for (a, b) in row.iter().zip(wrow) {
                        s += a * b;
                    }
                    s += layer.b[o];
                    out[r * layer.outputs + o] = if k + 1 < self.layers.len() {
                        s.max(0.0)
                    } else {
                        s
                    };
                }
            }
            h = out;
            w_in = layer.outputs;
        }
        h
    }

    /// Class probabilities `[rows, classes]` of a classifier.
    pub fn probabilities(&self, x: &[f32], width: usize) -> Vec<f32> {
        let z = self.logits(x, width);
        match self.task {
            Task::Binary => z
                .iter()
                .flat_map(|z| {
                    let p = 1.0 / (1.0 + (-z).exp());
                    [1.0 - p, p]
                })
                .collect(),
            Task::Multiclass { classes } => z
                .chunks(classes)
                .flat_map(|row| {
                    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let e: Vec<f32> = row.iter().map(|v| (v - m).exp()).collect();
                    let s: f32 = e.iter().sum();
                    e.into_iter().map(move |v| v / s)
                })
                .collect(),
            Task::Regression => z,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blobs(n: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
        let mut r = Rng::new(seed);
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..n {
            let c = (i % 3) as u32;
            x.push(c as f32 * 2.0 + r.uniform(-0.8, 0.8) as f32);
            x.push(-(c as f32) + r.uniform(-0.8, 0.8) as f32);
            y.push(c);
        }
        (x, y)
    }

    fn hyper(hidden: Vec<usize>) -> Hyper {
        Hyper {
            learning_rate: 0.05,
            l2: 1e-4,
            hidden,
            epochs: 30,
            batch_size: 32,
            patience: 5,
        }
    }

    #[test]
    fn fits_separable_classes_and_is_bit_identical_under_a_seed() {
        let (x, y) = blobs(300, 1);
        let w = vec![1f32; 300];
        let ex = Examples {
            x: &x,
            width: 2,
            classes: &y,
            values: &[],
            weights: &w,
        };
        let task = Task::Multiclass { classes: 3 };
        let run = |seed| fit(task, &hyper(vec![8]), &ex, &ex, seed, &mut |_| true).unwrap();
        let a = run(3);
        assert!(
            a.epochs.last().unwrap().validation_metric > 0.95,
            "{:?}",
            a.epochs.last()
        );
        let b = run(3);
        assert_eq!(a.network, b.network, "same seed, same weights, to the bit");
        assert_eq!(a.epochs, b.epochs);
        assert_ne!(a.network, run(4).network);
        // The plain forward agrees with the fitted accuracy.
        let p = a.network.probabilities(&x, 2);
        let hits = p
            .chunks(3)
            .zip(&y)
            .filter(|(row, &c)| {
                row.iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .unwrap()
                    .0
                    == c as usize
            })
            .count();
        assert!(hits as f64 / 300.0 > 0.95);
    }

    #[test]
    fn binary_and_regression_fit() {
        let (x, y) = blobs(300, 2);
        let y: Vec<u32> = y.iter().map(|c| u32::from(*c == 2)).collect();
        let w = vec![1f32; 300];
        let ex = Examples {
            x: &x,
            width: 2,
            classes: &y,
            values: &[],
            weights: &w,
        };
        let f = fit(Task::Binary, &hyper(vec![]), &ex, &ex, 1, &mut |_| true).unwrap();
        assert!(f.epochs.last().unwrap().validation_metric > 0.95);
        let v: Vec<f32> = x.chunks(2).map(|r| 0.5 * r[0] - r[1]).collect();
        let ex = Examples {
            x: &x,
            width: 2,
            classes: &[],
            values: &v,
            weights: &w,
        };
        let f = fit(Task::Regression, &hyper(vec![]), &ex, &ex, 1, &mut |_| true).unwrap();
        assert!(f.best_validation_loss < 1e-3, "{}", f.best_validation_loss);
        let l = &f.network.layers[0];
        assert!(
            (l.w[0] - 0.5).abs() < 0.05 && (l.w[1] + 1.0).abs() < 0.05,
            "{:?}",
            l.w
        );
    }

    #[test]
    fn early_stopping_keeps_the_best_epoch() {
        let (x, y) = blobs(90, 3);
        // Validation labels unrelated to the inputs: its loss soon rises.
        let yv: Vec<u32> = (0..90).map(|i| ((i * 7) % 3) as u32).collect();
        let w = vec![1f32; 90];
        let train = Examples {
            x: &x,
            width: 2,
            classes: &y,
            values: &[],
            weights: &w,
        };
        let val = Examples {
            x: &x,
            width: 2,
            classes: &yv,
            values: &[],
            weights: &w,
        };
        let mut h = hyper(vec![16]);
        h.epochs = 200;
        let f = fit(
            Task::Multiclass { classes: 3 },
            &h,
            &train,
            &val,
            1,
            &mut |_| true,
        )
        .unwrap();
        assert!(f.stopped_early);
        assert_eq!(f.epochs.len(), f.best_epoch + h.patience);
        let best = f
            .epochs
            .iter()
            .map(|e| e.validation_loss)
            .fold(f64::INFINITY, f64::min);
        assert_eq!(best, f.best_validation_loss);
    }
}
