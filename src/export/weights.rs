//! How the body's MatMul weights are written into the ONNX graph.
//!
//! Every scheme keeps LayerNorm, softmax, biases and the attention arithmetic in f32 and
//! stores only the dense layers' weights smaller. The stored form is expanded to f32 by a
//! small constant subgraph (Cast / Mul / integer Div and Mod), so any ONNX runtime can run
//! the body; embslim's own runtime expands these patterns itself before tract reads the
//! graph (`encode::expand_stored_weights`). See the README for speed and memory.

use tract_onnx::pb::{tensor_proto::DataType, TensorProto};

use super::graph::{attr_int, attr_ints, Graph};
use crate::error::{Error, Result};
use crate::format::Q4_BLOCK;
use crate::manifest::WeightScheme;
use crate::train::{gptq, quant};

/// A dense layer, weight already in MatMul layout [in, out].
pub struct Linear {
    pub name: String,
    pub n_in: usize,
    pub n_out: usize,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

impl Linear {
    /// The weight as torch stores it, [out, in]: one row per output channel.
    fn rows(&self) -> Vec<f32> {
        let mut t = vec![0f32; self.weight.len()];
        for i in 0..self.n_in {
            for o in 0..self.n_out {
                t[o * self.n_in + i] = self.weight[i * self.n_out + o];
            }
        }
        t
    }
}

fn raw(name: &str, dt: DataType, dims: &[usize], bytes: Vec<u8>) -> TensorProto {
    TensorProto { name: name.into(), dims: dims.iter().map(|d| *d as i64).collect(), data_type: dt as i32, raw_data: bytes, ..Default::default() }
}

impl WeightScheme {
    /// Emit `x @ W + b` for `lin` and return the output name. An int4 layer with the
    /// curvature of its inputs (`hessian`, see `calibrate`) is quantized by GPTQ, else
    /// rounded to each block's fitted scale and zero point.
    pub fn emit(self, g: &mut Graph, lin: &Linear, x: &str, hessian: Option<&[f64]>) -> Result<String> {
        let (n_in, n_out, name) = (lin.n_in, lin.n_out, lin.name.as_str());
        let w = match self {
            WeightScheme::F32 => g.init_f32(&format!("{name}.weight"), &[n_in, n_out], &lin.weight),
            WeightScheme::F16 => g.init_f16_as_f32(&format!("{name}.weight"), &[n_in, n_out], &lin.weight),
            WeightScheme::Int8 => {
                // symmetric int8 per output channel: W[:, o] = q[:, o] * scale[o]
                let (q, scale) = quant::int8_rows(&lin.rows(), n_in);
                let mut qt = vec![0i8; q.len()];
                for o in 0..n_out {
                    for i in 0..n_in {
                        qt[i * n_out + o] = q[o * n_in + i];
                    }
                }
                g.inits.push(raw(&format!("{name}.weight_q8"), DataType::Int8, &[n_in, n_out], qt.iter().map(|v| *v as u8).collect()));
                let s = g.init_f32(&format!("{name}.weight_scale"), &[n_out], &scale);
                let wf = g.node("Cast", &[&format!("{name}.weight_q8")], vec![attr_int("to", DataType::Float as i64)]);
                g.node("Mul", &[&wf, &s], vec![])
            }
            WeightScheme::Int4 => {
                // blocks of 32 inputs per output channel, 4-bit codes, an f16 scale and a
                // 4-bit zero point each (ONNX Runtime's MatMulNBits layout, quant::Q4Rows)
                if n_in % Q4_BLOCK != 0 {
                    return Err(Error::Usage(format!(
                        "--weights int4 needs every layer's input width to be a multiple of {Q4_BLOCK}; {name} has {n_in}"
                    )));
                }
                let q = match hessian {
                    Some(h) => gptq::q4_gptq(&lin.rows(), n_in, h).ok_or_else(|| {
                        Error::Usage(format!("GPTQ for {name}: the calibration inputs' curvature cannot be factored (non-finite activations?)"))
                    })?,
                    None => quant::q4_rows(&lin.rows(), n_in),
                };
                let (nb, zb) = (n_in / Q4_BLOCK, (n_in / Q4_BLOCK).div_ceil(2));
                g.inits.push(raw(&format!("{name}.weight_q4"), DataType::Uint8, &[n_out, nb, Q4_BLOCK / 2], q.codes));
                let sbytes = q.scales.iter().flat_map(|v| v.to_le_bytes()).collect();
                g.inits.push(raw(&format!("{name}.weight_q4scale"), DataType::Float16, &[n_out, nb, 1], sbytes));
                g.inits.push(raw(&format!("{name}.weight_q4zero"), DataType::Uint8, &[n_out, zb], q.zeros));
                // element 2i of the last axis is the low nibble, 2i+1 the high one
                let last = g.const_i64("c_axes_last", &[1], &[-1]);
                let nibbles = |g: &mut Graph, packed: &str| {
                    let sixteen = g.init_u8("c_u8_16", 16);
                    let lo = g.node("Mod", &[packed, &sixteen], vec![]);
                    let hi = g.node("Div", &[packed, &sixteen], vec![]);
                    let lo = g.node("Unsqueeze", &[&lo, &last], vec![]);
                    let hi = g.node("Unsqueeze", &[&hi, &last], vec![]);
                    g.node("Concat", &[&lo, &hi], vec![attr_int("axis", -1)])
                };
                let pairs = nibbles(g, &format!("{name}.weight_q4"));
                let shape = g.const_i64(&format!("c_q4_shape_{n_out}_{nb}"), &[3], &[n_out as i64, nb as i64, Q4_BLOCK as i64]);
                let blocks = g.node("Reshape", &[&pairs, &shape], vec![]);
                let qf = g.node("Cast", &[&blocks], vec![attr_int("to", DataType::Float as i64)]);
                // zero points [n_out, zb, 2] -> [n_out, nb, 1] (an odd count leaves a pad nibble)
                let zpairs = nibbles(g, &format!("{name}.weight_q4zero"));
                let zshape = g.const_i64(&format!("c_q4z_shape_{n_out}_{zb}"), &[2], &[n_out as i64, 2 * zb as i64]);
                let zflat = g.node("Reshape", &[&zpairs, &zshape], vec![]);
                let start = g.const_i64("c_q4z_start", &[1], &[0]);
                let end = g.const_i64(&format!("c_q4z_end_{nb}"), &[1], &[nb as i64]);
                let axis = g.const_i64("c_q4z_axis", &[1], &[1]);
                let zs = g.node("Slice", &[&zflat, &start, &end, &axis], vec![]);
                let zs = g.node("Unsqueeze", &[&zs, &last], vec![]);
                let zf = g.node("Cast", &[&zs], vec![attr_int("to", DataType::Float as i64)]);
                let centered = g.node("Sub", &[&qf, &zf], vec![]);
                let sf = g.node("Cast", &[&format!("{name}.weight_q4scale")], vec![attr_int("to", DataType::Float as i64)]);
                let wrows = g.node("Mul", &[&centered, &sf], vec![]);
                let flat = g.const_i64(&format!("c_rows_shape_{n_out}_{n_in}"), &[2], &[n_out as i64, n_in as i64]);
                let wrows = g.node("Reshape", &[&wrows, &flat], vec![]);
                g.node("Transpose", &[&wrows], vec![attr_ints("perm", &[1, 0])])
            }
        };
        let y = g.node("MatMul", &[x, &w], vec![]);
        let b = g.init_f32(&format!("{name}.bias"), &[n_out], &lin.bias);
        Ok(g.node("Add", &[&y, &b], vec![]))
    }
}
