//! Truncated SVD baseline, streamed: the Gram matrix X^T X (d x d, f64) is accumulated
//! over chunks of rows read from the memory map, its top-k eigenvectors V_k are the right
//! singular vectors, and the codes U_k S_k = X V_k are computed in a second streaming pass.
//! Memory is O(d^2 + chunk * d) besides the codes, so tables larger than RAM work.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par, Side};
use ndarray::{linalg::general_mat_mul, Array2, ArrayView2};

use super::source::SourceTable;
use crate::error::{Error, Result};

/// Rows per streaming chunk.
pub const CHUNK_ROWS: usize = 4096;

/// Right singular vectors of the table for the `k` largest singular values, as a d x k
/// matrix (column j is the j-th singular vector, in decreasing order), and the singular values.
pub fn top_right_singular(src: &SourceTable, k: usize, mut progress: impl FnMut(usize)) -> Result<(Array2<f32>, Vec<f64>)> {
    let d = src.dim;
    let mut gram = Mat::<f64>::zeros(d, d);
    let mut chunk = Mat::<f64>::zeros(CHUNK_ROWS, d);
    let mut buf = vec![0f32; CHUNK_ROWS * d];
    let mut start = 0;
    while start < src.vocab {
        let n = CHUNK_ROWS.min(src.vocab - start);
        let rows = &mut buf[..n * d];
        src.read_rows(start, rows);
        src.check_finite(rows, start)?;
        for (i, row) in rows.chunks_exact(d).enumerate() {
            for (j, v) in row.iter().enumerate() {
                chunk[(i, j)] = f64::from(*v);
            }
        }
        let c = chunk.as_ref().subrows(0, n);
        // faer's blocked, multithreaded f64 GEMM: the Gram pass is V d^2 multiply-adds
        matmul(gram.as_mut(), Accum::Add, c.transpose(), c, 1.0, Par::rayon(0));
        src.release_rows(start, n);
        start += n;
        progress(start);
    }
    let eig = gram
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| Error::model(&src.file, format!("eigendecomposition of the Gram matrix failed: {e:?}")))?;
    let (u, s) = (eig.U(), eig.S());
    // eigenvalues come in nondecreasing order: the last k columns, reversed
    let vk = Array2::from_shape_fn((d, k), |(i, j)| u[(i, d - 1 - j)] as f32);
    let sv = (0..k).map(|j| s[d - 1 - j].max(0.0).sqrt()).collect();
    Ok((vk, sv))
}

/// Codes Z = X V_k for every row, streamed (V x k, row-major).
pub fn project(src: &SourceTable, vk: &Array2<f32>) -> Vec<f32> {
    let (d, k) = vk.dim();
    let mut z = Array2::<f32>::zeros((src.vocab, k));
    let mut buf = vec![0f32; CHUNK_ROWS * d];
    let mut start = 0;
    while start < src.vocab {
        let n = CHUNK_ROWS.min(src.vocab - start);
        src.read_rows(start, &mut buf[..n * d]);
        let c = ArrayView2::from_shape((n, d), &buf[..n * d]).expect("chunk shape");
        let mut out = z.slice_mut(ndarray::s![start..start + n, ..]);
        general_mat_mul(1.0, &c, vk, 0.0, &mut out);
        src.release_rows(start, n);
        start += n;
    }
    z.into_raw_vec_and_offset().0
}
