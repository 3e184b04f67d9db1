//! Reading the word-embedding table of a model without loading the rest of it.
//!
//! A Hugging Face checkpoint directory (config.json + model.safetensors) or a bare
//! .safetensors file: the tensor `embeddings.word_embeddings.weight`, with or without a
//! model prefix. An ONNX file: the [V, d] initializer that feeds the Gather on the
//! `input_ids` graph input, found by walking the protobuf over the memory map (only node
//! descriptions are decoded; no other initializer is copied).

use std::path::{Path, PathBuf};

use half::{bf16, f16};

use crate::error::{Error, Result};
use crate::mmap::Mapped;

const WORD_EMBEDDINGS: &str = "embeddings.word_embeddings.weight";

/// Widest table accepted: streaming passes hold a few thousand rows of this width, and
/// a hostile file must not turn its shape into an impossible allocation.
pub const MAX_DIM: usize = 65536;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SrcDtype {
    F32,
    F16,
    Bf16,
}

impl SrcDtype {
    fn size(self) -> usize {
        match self {
            SrcDtype::F32 => 4,
            SrcDtype::F16 | SrcDtype::Bf16 => 2,
        }
    }
}

/// Where a model's table was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    HuggingFace,
    Onnx,
}

/// The word-embedding table of a model, read row by row from a memory map.
#[derive(Debug)]
pub struct SourceTable {
    map: Mapped,
    offset: usize,
    dtype: SrcDtype,
    pub vocab: usize,
    pub dim: usize,
    /// The file the table lives in (model.safetensors or model.onnx).
    pub file: PathBuf,
    /// Name of the tensor (or ONNX initializer) holding the table.
    pub tensor: String,
    pub kind: SourceKind,
}

impl SourceTable {
    /// Open the table of the model at `model` (a checkpoint directory, a .safetensors
    /// file or an .onnx file).
    pub fn open(model: &Path) -> Result<Self> {
        let (file, kind) = if model.is_dir() {
            let st = model.join("model.safetensors");
            let onnx = model.join("model.onnx");
            if st.is_file() {
                (st, SourceKind::HuggingFace)
            } else if onnx.is_file() {
                (onnx, SourceKind::Onnx)
            } else {
                return Err(Error::model(model, "directory has neither model.safetensors nor model.onnx"));
            }
        } else if model.extension().is_some_and(|e| e == "onnx") {
            (model.to_path_buf(), SourceKind::Onnx)
        } else {
            (model.to_path_buf(), SourceKind::HuggingFace)
        };
        // SAFETY: model files are inputs we only read; see `Mapped::open`.
        let map = unsafe { Mapped::open(&file)? };
        let found = match kind {
            SourceKind::HuggingFace => find_safetensors(map.bytes()),
            SourceKind::Onnx => find_onnx(map.bytes()),
        }
        .map_err(|msg| Error::model(&file, msg))?;
        let end = found
            .vocab
            .checked_mul(found.dim)
            .and_then(|n| n.checked_mul(found.dtype.size()))
            .and_then(|n| n.checked_add(found.offset))
            .ok_or_else(|| Error::model(&file, "table size overflows"))?;
        if end > map.bytes().len() {
            return Err(Error::model(&file, format!("table '{}' extends beyond the file", found.tensor)));
        }
        if found.dim > MAX_DIM {
            return Err(Error::model(&file, format!("table '{}' has {} columns; no supported encoder is wider than {MAX_DIM}", found.tensor, found.dim)));
        }
        if found.vocab < 2 || found.dim < 2 {
            return Err(Error::model(&file, format!("table '{}' has shape [{}, {}], too small to compress", found.tensor, found.vocab, found.dim)));
        }
        Ok(SourceTable {
            map,
            offset: found.offset,
            dtype: found.dtype,
            vocab: found.vocab,
            dim: found.dim,
            file,
            tensor: found.tensor,
            kind,
        })
    }

    /// Copy rows `start..start + out.len() / dim` as f32 into `out`.
    pub fn read_rows(&self, start: usize, out: &mut [f32]) {
        let n = out.len() / self.dim;
        assert!(start + n <= self.vocab && out.len() % self.dim == 0, "row range out of the table");
        let es = self.dtype.size();
        let bytes = &self.map.bytes()[self.offset + start * self.dim * es..self.offset + (start + n) * self.dim * es];
        match self.dtype {
            SrcDtype::F32 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            SrcDtype::F16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            SrcDtype::Bf16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
        }
    }

    /// Drop rows `start..start + n` from memory once a streaming pass is done with them.
    pub fn release_rows(&self, start: usize, n: usize) {
        let es = self.dtype.size() * self.dim;
        let page = 4096;
        // Only whole pages strictly inside the range, so rows still to come stay mapped.
        let from = (self.offset + start * es).div_ceil(page) * page;
        let to = (self.offset + (start + n) * es) / page * page;
        if to > from {
            self.map.release(from, to - from);
        }
    }

    /// The whole table as a row-major f32 matrix, checked for non-finite values.
    pub fn load(&self) -> Result<Vec<f32>> {
        let mut x = vec![0f32; self.vocab * self.dim];
        self.read_rows(0, &mut x);
        self.check_finite(&x, 0)?;
        Ok(x)
    }

    /// Error naming the first non-finite value of rows starting at `start`.
    pub fn check_finite(&self, rows: &[f32], start: usize) -> Result<()> {
        if let Some(i) = rows.iter().position(|v| !v.is_finite()) {
            return Err(Error::model(
                &self.file,
                format!("table '{}' holds a non-finite value at row {}, column {}", self.tensor, start + i / self.dim, i % self.dim),
            ));
        }
        Ok(())
    }

    /// sha256 of the file holding the table, read with plain reads so that a table
    /// larger than memory does not become resident in this process.
    pub fn sha256(&self) -> Result<String> {
        Ok(crate::fsutil::sha256_file(&self.file)?.0)
    }
}

struct Found {
    offset: usize,
    dtype: SrcDtype,
    vocab: usize,
    dim: usize,
    tensor: String,
}

fn find_safetensors(bytes: &[u8]) -> std::result::Result<Found, String> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| format!("not a valid safetensors file: {e:?}"))?;
    let names = st.names();
    let name = names
        .iter()
        .find(|n| n.as_str() == WORD_EMBEDDINGS || n.ends_with(&format!(".{WORD_EMBEDDINGS}")))
        .ok_or_else(|| format!("no tensor named '{WORD_EMBEDDINGS}' (with or without a model prefix)"))?;
    let view = st.tensor(name).map_err(|e| format!("{name}: {e:?}"))?;
    let dtype = match view.dtype() {
        safetensors::Dtype::F32 => SrcDtype::F32,
        safetensors::Dtype::F16 => SrcDtype::F16,
        safetensors::Dtype::BF16 => SrcDtype::Bf16,
        other => return Err(format!("tensor '{name}' has dtype {other:?}; expected F32, F16 or BF16")),
    };
    let shape = view.shape();
    if shape.len() != 2 {
        return Err(format!("tensor '{name}' has shape {shape:?}; expected [vocab, dim]"));
    }
    let offset = view.data().as_ptr() as usize - bytes.as_ptr() as usize;
    Ok(Found { offset, dtype, vocab: shape[0], dim: shape[1], tensor: name.to_string() })
}

// ---- a minimal protobuf walker over ONNX bytes ----

/// One field of a protobuf message: number and payload (varint value or bytes).
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

fn varint(buf: &[u8], pos: &mut usize) -> std::result::Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint longer than 10 bytes".into())
}

/// Iterate over the fields of one message.
fn fields(buf: &[u8]) -> impl Iterator<Item = std::result::Result<(u64, Field<'_>), String>> {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        if pos >= buf.len() {
            return None;
        }
        let step = (|| {
            let key = varint(buf, &mut pos)?;
            let (num, wire) = (key >> 3, key & 7);
            let f = match wire {
                0 => Field::Varint(varint(buf, &mut pos)?),
                1 | 5 => {
                    pos = pos.checked_add(if wire == 1 { 8 } else { 4 }).filter(|p| *p <= buf.len()).ok_or("truncated fixed field")?;
                    Field::Fixed
                }
                2 => {
                    let len = usize::try_from(varint(buf, &mut pos)?).map_err(|_| "length overflow")?;
                    let end = pos.checked_add(len).filter(|e| *e <= buf.len()).ok_or("truncated length-delimited field")?;
                    let b = &buf[pos..end];
                    pos = end;
                    Field::Bytes(b)
                }
                w => return Err(format!("unsupported protobuf wire type {w}")),
            };
            Ok((num, f))
        })();
        if step.is_err() {
            pos = buf.len();
        }
        Some(step)
    })
}

fn string(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Walk ModelProto.graph (7): find a Gather whose indices are the `input_ids` graph input
/// (or any int64 graph input when the names differ), whose data is a 2-D initializer.
fn find_onnx(bytes: &[u8]) -> std::result::Result<Found, String> {
    let mut graph = None;
    for f in fields(bytes) {
        if let (7, Field::Bytes(b)) = f.map_err(|e| format!("not a valid ONNX file: {e}"))? {
            graph = Some(b);
        }
    }
    let graph = graph.ok_or("not a valid ONNX file: no graph")?;
    let mut gathers = Vec::new(); // (data, indices)
    let mut inputs = Vec::new();
    let mut inits: Vec<&[u8]> = Vec::new();
    for f in fields(graph) {
        match f.map_err(|e| format!("ONNX graph: {e}"))? {
            (1, Field::Bytes(node)) => {
                let (mut ins, mut op) = (Vec::new(), String::new());
                for nf in fields(node) {
                    match nf? {
                        (1, Field::Bytes(s)) => ins.push(string(s)),
                        (4, Field::Bytes(s)) => op = string(s),
                        _ => {}
                    }
                }
                if op == "Gather" && ins.len() == 2 {
                    gathers.push((ins[0].clone(), ins[1].clone()));
                }
            }
            (5, Field::Bytes(t)) => inits.push(t),
            (11, Field::Bytes(vi)) => {
                for vf in fields(vi) {
                    if let (1, Field::Bytes(s)) = vf? {
                        inputs.push(string(s));
                    }
                }
            }
            _ => {}
        }
    }
    let ids = inputs
        .iter()
        .find(|n| n.as_str() == "input_ids")
        .or_else(|| inputs.iter().find(|n| n.contains("input_ids")))
        .ok_or("ONNX graph has no input named input_ids")?;
    let data_names: Vec<&String> = gathers.iter().filter(|(_, i)| i == ids).map(|(d, _)| d).collect();
    for t in inits {
        let tensor = onnx_tensor(t)?;
        if data_names.contains(&&tensor.tensor) && tensor.vocab > 0 {
            // onnx_tensor records where the data starts in memory; make it file-relative.
            return Ok(Found { offset: tensor.offset - bytes.as_ptr() as usize, ..tensor });
        }
    }
    Err(format!("no Gather on '{ids}' reads a [vocab, dim] initializer"))
}

/// Decode a TensorProto header; the data stays in place (raw_data or packed float_data).
fn onnx_tensor(t: &[u8]) -> std::result::Result<Found, String> {
    let (mut dims, mut dtype, mut name, mut data, mut external) = (Vec::new(), 0u64, String::new(), None, false);
    for f in fields(t) {
        match f? {
            (1, Field::Varint(d)) => dims.push(d),
            (1, Field::Bytes(packed)) => {
                let mut p = 0;
                while p < packed.len() {
                    dims.push(varint(packed, &mut p)?);
                }
            }
            (2, Field::Varint(d)) => dtype = d,
            (4, Field::Bytes(b)) | (9, Field::Bytes(b)) => data = Some(b),
            (8, Field::Bytes(s)) => name = string(s),
            (14, Field::Varint(1)) => external = true,
            _ => {}
        }
    }
    let dt = match dtype {
        1 => SrcDtype::F32,
        10 => SrcDtype::F16,
        16 => SrcDtype::Bf16,
        _ => SrcDtype::F32,
    };
    if dims.len() != 2 {
        return Ok(Found { offset: 0, dtype: dt, vocab: 0, dim: 0, tensor: name });
    }
    if external {
        return Err(format!("initializer '{name}' is stored as external data, which is not supported"));
    }
    if !matches!(dtype, 1 | 10 | 16) {
        return Err(format!("initializer '{name}' has ONNX data type {dtype}; expected float, float16 or bfloat16"));
    }
    let data = data.ok_or_else(|| format!("initializer '{name}' has no raw data"))?;
    let (vocab, dim) = (usize::try_from(dims[0]).map_err(|_| "dim overflow")?, usize::try_from(dims[1]).map_err(|_| "dim overflow")?);
    let need = vocab.checked_mul(dim).and_then(|n| n.checked_mul(dt.size())).ok_or("shape overflows")?;
    if data.len() != need {
        return Err(format!("initializer '{name}' holds {} bytes; its shape [{vocab}, {dim}] needs {need}", data.len()));
    }
    Ok(Found { offset: data.as_ptr() as usize, dtype: dt, vocab, dim, tensor: name })
}
