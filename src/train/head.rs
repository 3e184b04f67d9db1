//! Offline training of the classification head: multinomial logistic regression on
//! L2-normalized sentence embeddings, the objective of scikit-learn's
//! `LogisticRegression(C)`: `sum_i CE_i + ||W||^2 / (2 C)` (bias not penalized),
//! minimized with L-BFGS to a tight gradient tolerance.

/// A stratified split: per class, the class's documents are shuffled with a splitmix64
/// stream seeded by `seed` and the first round(fraction * n_class) go to the test set.
/// (tools/reference.py implements the same rule, so both sides use identical splits.)
pub fn stratified_split(labels: &[usize], n_classes: usize, test_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut rng = SplitMix64(seed);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for c in 0..n_classes {
        let mut idx: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == c).collect();
        // Fisher-Yates, from the end
        for i in (1..idx.len()).rev() {
            let j = (rng.next() % (i as u64 + 1)) as usize;
            idx.swap(i, j);
        }
        let n_test = (test_fraction * idx.len() as f64).round() as usize;
        test.extend_from_slice(&idx[..n_test]);
        train.extend_from_slice(&idx[n_test..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    (train, test)
}

pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Result of fitting the head.
pub struct Fit {
    /// C x d, row-major.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub iterations: usize,
    pub loss: f64,
    pub grad_norm: f64,
}

/// Objective and gradient at `theta` = [W (k x d) | b (k)].
fn objective(theta: &[f64], x: &[f32], y: &[usize], k: usize, d: usize, c: f64, grad: &mut [f64]) -> f64 {
    let (w, b) = theta.split_at(k * d);
    grad.iter_mut().for_each(|g| *g = 0.0);
    let mut loss = 0.0;
    let mut z = vec![0f64; k];
    for (xi, &yi) in x.chunks_exact(d).zip(y) {
        for (j, zj) in z.iter_mut().enumerate() {
            *zj = b[j] + w[j * d..(j + 1) * d].iter().zip(xi).map(|(a, v)| a * f64::from(*v)).sum::<f64>();
        }
        let m = z.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v));
        let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        loss += lse - z[yi];
        let (gw, gb) = grad.split_at_mut(k * d);
        for j in 0..k {
            let p = (z[j] - lse).exp() - if j == yi { 1.0 } else { 0.0 };
            gb[j] += p;
            for (g, v) in gw[j * d..(j + 1) * d].iter_mut().zip(xi) {
                *g += p * f64::from(*v);
            }
        }
    }
    let reg = 0.5 / c;
    for (g, wv) in grad[..k * d].iter_mut().zip(w) {
        *g += 2.0 * reg * wv;
        loss += reg * wv * wv;
    }
    loss
}

/// Fit the head on `x` (n x d embeddings) with labels `y` in 0..k. `progress` gets
/// (iteration, loss, gradient norm).
pub fn fit(x: &[f32], y: &[usize], k: usize, d: usize, c: f64, mut progress: impl FnMut(usize, f64, f64)) -> Fit {
    const MEMORY: usize = 10;
    const MAX_ITER: usize = 2000;
    let n = k * d + k;
    let mut theta = vec![0f64; n];
    let mut g = vec![0f64; n];
    let mut f = objective(&theta, x, y, k, d, c, &mut g);
    let tol = 1e-6 * (y.len() as f64).max(1.0);
    let (mut s_hist, mut y_hist): (Vec<Vec<f64>>, Vec<Vec<f64>>) = (Vec::new(), Vec::new());
    let norm = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
    let mut iterations = 0;
    let mut g_new = vec![0f64; n];
    while iterations < MAX_ITER && norm(&g) > tol {
        iterations += 1;
        // two-loop recursion: direction = -H g
        let mut q = g.clone();
        let mut alphas = Vec::with_capacity(s_hist.len());
        for (s, yv) in s_hist.iter().zip(&y_hist).rev() {
            let rho = 1.0 / dot(yv, s);
            let a = rho * dot(s, &q);
            q.iter_mut().zip(yv).for_each(|(qi, yi)| *qi -= a * yi);
            alphas.push((a, rho));
        }
        let gamma = match (s_hist.last(), y_hist.last()) {
            (Some(s), Some(yv)) => dot(s, yv) / dot(yv, yv),
            _ => 1.0 / norm(&g).max(1e-12),
        };
        q.iter_mut().for_each(|v| *v *= gamma);
        for ((s, yv), (a, rho)) in s_hist.iter().zip(&y_hist).zip(alphas.into_iter().rev()) {
            let bta = rho * dot(yv, &q);
            q.iter_mut().zip(s).for_each(|(qi, si)| *qi += (a - bta) * si);
        }
        let dir: Vec<f64> = q.iter().map(|v| -v).collect();
        let slope = dot(&g, &dir);
        if slope >= 0.0 {
            // not a descent direction: restart from steepest descent
            s_hist.clear();
            y_hist.clear();
            continue;
        }
        // backtracking line search (Armijo)
        let mut step = 1.0;
        let mut theta_new;
        let mut f_new;
        loop {
            theta_new = theta.iter().zip(&dir).map(|(t, d)| t + step * d).collect::<Vec<f64>>();
            f_new = objective(&theta_new, x, y, k, d, c, &mut g_new);
            if f_new <= f + 1e-4 * step * slope || step < 1e-12 {
                break;
            }
            step *= 0.5;
        }
        let s: Vec<f64> = theta_new.iter().zip(&theta).map(|(a, b)| a - b).collect();
        let yv: Vec<f64> = g_new.iter().zip(&g).map(|(a, b)| a - b).collect();
        if dot(&s, &yv) > 1e-12 {
            s_hist.push(s);
            y_hist.push(yv);
            if s_hist.len() > MEMORY {
                s_hist.remove(0);
                y_hist.remove(0);
            }
        }
        let converged_f = (f - f_new).abs() <= 1e-12 * f.abs().max(1.0);
        theta = theta_new;
        f = f_new;
        std::mem::swap(&mut g, &mut g_new);
        progress(iterations, f, norm(&g));
        if converged_f {
            break;
        }
    }
    Fit {
        weight: theta[..k * d].iter().map(|v| *v as f32).collect(),
        bias: theta[k * d..].iter().map(|v| *v as f32).collect(),
        iterations,
        loss: f,
        grad_norm: norm(&g),
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Accuracy, macro-F1 and the confusion matrix (rows: true class, columns: predicted).
pub fn scores(truth: &[usize], pred: &[usize], k: usize) -> (f64, f64, Vec<Vec<usize>>) {
    let mut cm = vec![vec![0usize; k]; k];
    for (&t, &p) in truth.iter().zip(pred) {
        cm[t][p] += 1;
    }
    let correct: usize = (0..k).map(|i| cm[i][i]).sum();
    let f1: f64 = (0..k)
        .map(|c| {
            let tp = cm[c][c] as f64;
            let fp = (0..k).map(|t| cm[t][c]).sum::<usize>() as f64 - tp;
            let fneg = cm[c].iter().sum::<usize>() as f64 - tp;
            if tp == 0.0 {
                0.0
            } else {
                2.0 * tp / (2.0 * tp + fp + fneg)
            }
        })
        .sum::<f64>()
        / k as f64;
    (correct as f64 / truth.len().max(1) as f64, f1, cm)
}

/// Pick C from `grid` by `folds`-fold stratified cross-validation on (x, y); ties go to
/// the smaller C (stronger regularization). Returns C and its mean validation accuracy.
pub fn choose_c(x: &[f32], y: &[usize], k: usize, d: usize, grid: &[f64], folds: usize, seed: u64) -> (f64, f64) {
    use rayon::prelude::*;
    // fold of each sample: per class, shuffled and dealt round-robin
    let mut rng = SplitMix64(seed ^ 0x5EED_C0DE);
    let mut fold = vec![0usize; y.len()];
    for c in 0..k {
        let mut idx: Vec<usize> = (0..y.len()).filter(|&i| y[i] == c).collect();
        for i in (1..idx.len()).rev() {
            let j = (rng.next() % (i as u64 + 1)) as usize;
            idx.swap(i, j);
        }
        for (n, &i) in idx.iter().enumerate() {
            fold[i] = n % folds;
        }
    }
    let jobs: Vec<(usize, usize)> = (0..grid.len()).flat_map(|g| (0..folds).map(move |f| (g, f))).collect();
    let correct: Vec<(usize, usize)> = jobs
        .par_iter()
        .map(|&(g, f)| {
            let (tr, va): (Vec<usize>, Vec<usize>) = (0..y.len()).partition(|&i| fold[i] != f);
            let xs = |idx: &[usize]| idx.iter().flat_map(|&i| x[i * d..(i + 1) * d].iter().copied()).collect::<Vec<f32>>();
            let ytr: Vec<usize> = tr.iter().map(|&i| y[i]).collect();
            let m = fit(&xs(&tr), &ytr, k, d, grid[g], |_, _, _| {});
            let ok = va.iter().filter(|&&i| predict(&m.weight, &m.bias, &x[i * d..(i + 1) * d], d) == y[i]).count();
            (g, ok)
        })
        .collect();
    let mut best = (grid[0], -1.0);
    for (g, &c) in grid.iter().enumerate() {
        let acc = correct.iter().filter(|(gg, _)| *gg == g).map(|(_, ok)| *ok).sum::<usize>() as f64 / y.len() as f64;
        if acc > best.1 {
            best = (c, acc);
        }
    }
    best
}

/// Index of the largest logit of W x + b.
pub fn predict(w: &[f32], b: &[f32], x: &[f32], d: usize) -> usize {
    let logit = |j: usize| w[j * d..(j + 1) * d].iter().zip(x).map(|(a, v)| a * v).sum::<f32>() + b[j];
    (0..b.len()).max_by(|&i, &j| logit(i).total_cmp(&logit(j))).unwrap_or(0)
}
