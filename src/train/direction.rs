//! The paper's direction-aware linear autoencoder (METHOD.md).
//!
//! Encoder z = x A + a (d -> k), decoder x' = z W + b (k -> d). Loss per batch:
//! `c_cos * mean(1 - cos(x, x')) + c_l1 * mean((|x - x'| + 1e-10) ^ alpha)` with alpha
//! annealed linearly from 1.0 (epoch 0) to 0.1 (epoch 20), Adam (lr 1e-3, batch 32, rows
//! shuffled each epoch), lr halved every 4 epochs, and the epoch with the best mean token
//! cosine over all rows kept. Gradients are written by hand (checked against finite
//! differences in the tests); the matrix products go through matrixmultiply.

use ndarray::{linalg::general_mat_mul, Array2, ArrayView2, ArrayViewMut2};
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};
use rayon::prelude::*;

pub const C_COS: f32 = 0.9975 / 5.0;
pub const C_L1: f32 = 0.0025;
pub const L1_EPS: f32 = 1e-10;
/// torch.nn.functional.cosine_similarity's eps on the norms.
pub const COS_EPS: f32 = 1e-8;
const ADAM_B1: f32 = 0.9;
const ADAM_B2: f32 = 0.999;
const ADAM_EPS: f32 = 1e-8;

#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub rank: usize,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f32,
    pub seed: u64,
    /// Start from the SVD solution (A = V_k, W = V_k^T, zero biases).
    pub init_svd: Option<Array2<f32>>,
}

/// alpha of the powered-L1 term at `epoch`: 1.0 -> 0.1 linearly over 20 epochs.
pub fn alpha_at(epoch: usize) -> f32 {
    1.0 - 0.9 * (epoch.min(20) as f32) / 20.0
}

/// Step decay: lr halved every 4 epochs.
pub fn lr_at(lr0: f32, epoch: usize) -> f32 {
    lr0 * 0.5f32.powi((epoch / 4) as i32)
}

/// Autoencoder parameters.
#[derive(Clone, Debug)]
pub struct Params {
    pub a: Array2<f32>,   // d x k
    pub a_b: Vec<f32>,    // k
    pub w: Array2<f32>,   // k x d
    pub w_b: Vec<f32>,    // d
}

impl Params {
    /// PyTorch nn.Linear default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases.
    pub fn random(d: usize, k: usize, rng: &mut impl Rng) -> Self {
        let (ba, bw) = (1.0 / (d as f32).sqrt(), 1.0 / (k as f32).sqrt());
        Params {
            a: Array2::from_shape_fn((d, k), |_| rng.gen_range(-ba..ba)),
            a_b: (0..k).map(|_| rng.gen_range(-ba..ba)).collect(),
            w: Array2::from_shape_fn((k, d), |_| rng.gen_range(-bw..bw)),
            w_b: (0..d).map(|_| rng.gen_range(-bw..bw)).collect(),
        }
    }

    pub fn from_svd(vk: &Array2<f32>) -> Self {
        let (d, k) = vk.dim();
        Params { a: vk.as_standard_layout().into_owned(), a_b: vec![0.0; k], w: vk.t().as_standard_layout().into_owned(), w_b: vec![0.0; d] }
    }

    fn zeros_like(&self) -> Self {
        let (d, k) = self.a.dim();
        Params { a: Array2::zeros((d, k)), a_b: vec![0.0; k], w: Array2::zeros((k, d)), w_b: vec![0.0; d] }
    }

    fn slices_mut(&mut self) -> [&mut [f32]; 4] {
        [
            self.a.as_slice_mut().expect("standard layout"),
            &mut self.a_b,
            self.w.as_slice_mut().expect("standard layout"),
            &mut self.w_b,
        ]
    }

    /// Codes for rows `x` (n x d): Z = X A + a.
    pub fn encode(&self, x: ArrayView2<f32>) -> Array2<f32> {
        let mut z = Array2::from_shape_fn((x.nrows(), self.a.ncols()), |(_, j)| self.a_b[j]);
        general_mat_mul(1.0, &x, &self.a, 1.0, &mut z);
        z
    }

    /// Reconstruction from codes: X' = Z W + b.
    pub fn decode(&self, z: ArrayView2<f32>) -> Array2<f32> {
        let mut y = Array2::from_shape_fn((z.nrows(), self.w.ncols()), |(_, j)| self.w_b[j]);
        general_mat_mul(1.0, &z, &self.w, 1.0, &mut y);
        y
    }
}

/// Loss of a batch and its gradient with respect to the parameters.
/// `x` is B x d; returns the loss (accumulated in f64) and fills `grad`.
pub fn loss_and_grad(p: &Params, x: ArrayView2<f32>, alpha: f32, grad: &mut Params) -> f64 {
    let (bsz, d) = x.dim();
    let z = p.encode(x);
    let mut y = p.decode(z.view());
    // y becomes dL/dy in place, row by row
    let (gc, gl) = (C_COS / bsz as f32, C_L1 * alpha / (bsz * d) as f32);
    let mut loss = 0f64;
    for (xr, mut yr) in x.outer_iter().zip(y.outer_iter_mut()) {
        let (mut dot, mut nx2, mut ny2) = (0f32, 0f32, 0f32);
        for (&a, &b) in xr.iter().zip(yr.iter()) {
            dot += a * b;
            nx2 += a * a;
            ny2 += b * b;
        }
        let (nx, ny) = (nx2.sqrt().max(COS_EPS), ny2.sqrt().max(COS_EPS));
        let cos = dot / (nx * ny);
        loss += f64::from(C_COS) * f64::from(1.0 - cos) / bsz as f64;
        let (cx, cy) = (1.0 / (nx * ny), cos / (ny * ny));
        let mut l1 = 0f64;
        for (&xv, yv) in xr.iter().zip(yr.iter_mut()) {
            let r = xv - *yv;
            let ar = r.abs() + L1_EPS;
            let pw = ar.powf(alpha);
            l1 += f64::from(pw);
            // d/dy |x - y|^alpha = -alpha |r|^(alpha-1) sign(r); torch's sign(0) = 0
            let dl1 = if r == 0.0 { 0.0 } else { -gl * pw / ar * r.signum() };
            *yv = -gc * (xv * cx - *yv * cy) + dl1;
        }
        loss += f64::from(C_L1) * l1 / (bsz * d) as f64;
    }
    let gy = y;
    // decoder: dW = Z^T G, db = colsum G
    general_mat_mul(1.0, &z.t(), &gy, 0.0, &mut grad.w);
    col_sums(gy.view(), &mut grad.w_b);
    // encoder: G_Z = G W^T, dA = X^T G_Z, da = colsum G_Z
    let mut gz = Array2::<f32>::zeros(z.dim());
    general_mat_mul(1.0, &gy, &p.w.t(), 0.0, &mut gz);
    general_mat_mul(1.0, &x.t(), &gz, 0.0, &mut grad.a);
    col_sums(gz.view(), &mut grad.a_b);
    loss
}

fn col_sums(m: ArrayView2<f32>, out: &mut [f32]) {
    out.iter_mut().for_each(|o| *o = 0.0);
    for row in m.outer_iter() {
        for (o, v) in out.iter_mut().zip(row.iter()) {
            *o += v;
        }
    }
}

struct Adam {
    m: Params,
    v: Params,
    t: i32,
}

impl Adam {
    fn new(p: &Params) -> Self {
        Adam { m: p.zeros_like(), v: p.zeros_like(), t: 0 }
    }

    /// torch.optim.Adam with bias correction.
    fn step(&mut self, p: &mut Params, g: &mut Params, lr: f32) {
        self.t += 1;
        let (c1, c2) = (1.0 - ADAM_B1.powi(self.t), 1.0 - ADAM_B2.powi(self.t));
        let step = lr / c1;
        let c2s = c2.sqrt();
        for (((pp, gg), mm), vv) in p.slices_mut().into_iter().zip(g.slices_mut()).zip(self.m.slices_mut()).zip(self.v.slices_mut()) {
            for i in 0..pp.len() {
                mm[i] = ADAM_B1 * mm[i] + (1.0 - ADAM_B1) * gg[i];
                vv[i] = ADAM_B2 * vv[i] + (1.0 - ADAM_B2) * gg[i] * gg[i];
                pp[i] -= step * mm[i] / (vv[i].sqrt() / c2s + ADAM_EPS);
            }
        }
    }
}

/// Per-epoch statistics reported to the caller's progress display.
#[derive(Clone, Copy, Debug)]
pub struct EpochStats {
    pub epoch: usize,
    pub loss: f64,
    pub cos_mean: f64,
    pub lr: f32,
    pub alpha: f32,
}

/// Mean token cosine of the autoencoder's reconstruction over all rows of `x`.
pub fn mean_cosine(p: &Params, x: ArrayView2<f32>) -> f64 {
    let d = x.ncols();
    let chunks: Vec<_> = x.axis_chunks_iter(ndarray::Axis(0), 1024).collect();
    let total: f64 = chunks
        .par_iter()
        .map(|c| {
            let y = p.decode(p.encode(c.view()).view());
            let rows = |m: ArrayView2<'_, f32>| m.as_slice().expect("row-major chunk").chunks_exact(d).map(<[f32]>::to_vec).collect::<Vec<_>>();
            rows(c.view()).iter().zip(rows(y.view())).map(|(a, b)| f64::from(cosine(a, &b))).sum::<f64>()
        })
        .sum();
    total / x.nrows() as f64
}

/// Cosine of two vectors, with torch's eps on the norms.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0f32, 0f32, 0f32);
    for (&x, &y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    dot / (na.sqrt().max(COS_EPS) * nb.sqrt().max(COS_EPS))
}

/// Train the autoencoder on the table `x` (V x d). Returns the parameters of the best
/// epoch (by mean token cosine over all rows) and the statistics of every epoch.
pub fn train(x: ArrayView2<f32>, cfg: &TrainConfig, mut on_epoch: impl FnMut(&EpochStats)) -> (Params, Vec<EpochStats>) {
    let (v, d) = x.dim();
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut p = match &cfg.init_svd {
        Some(vk) => Params::from_svd(vk),
        None => Params::random(d, cfg.rank, &mut rng),
    };
    let mut grad = p.zeros_like();
    let mut adam = Adam::new(&p);
    let mut order: Vec<usize> = (0..v).collect();
    let mut batch = Array2::<f32>::zeros((cfg.batch, d));
    let (mut best, mut best_cos) = (p.clone(), f64::NEG_INFINITY);
    let mut stats = Vec::with_capacity(cfg.epochs);
    for epoch in 0..cfg.epochs {
        let (alpha, lr) = (alpha_at(epoch), lr_at(cfg.lr, epoch));
        order.shuffle(&mut rng);
        let mut loss_sum = 0f64;
        let mut nb = 0usize;
        for ids in order.chunks(cfg.batch) {
            let mut xb = batch.slice_mut(ndarray::s![..ids.len(), ..]);
            gather_rows(x, ids, &mut xb);
            loss_sum += loss_and_grad(&p, xb.view(), alpha, &mut grad);
            adam.step(&mut p, &mut grad, lr);
            nb += 1;
        }
        let cos_mean = mean_cosine(&p, x);
        let s = EpochStats { epoch, loss: loss_sum / nb as f64, cos_mean, lr, alpha };
        on_epoch(&s);
        stats.push(s);
        if cos_mean > best_cos {
            best_cos = cos_mean;
            best = p.clone();
        }
    }
    (best, stats)
}

fn gather_rows(x: ArrayView2<f32>, ids: &[usize], out: &mut ArrayViewMut2<f32>) {
    for (mut o, &i) in out.outer_iter_mut().zip(ids) {
        o.assign(&x.row(i));
    }
}
