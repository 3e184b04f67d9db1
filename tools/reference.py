#!/usr/bin/env python3
"""Independent numpy reference implementation used to validate embslim's Rust code.

Only stdlib + numpy + tokenizers + safetensors + onnx/onnxruntime + scikit-learn (no torch,
no scipy).  Everything numeric runs in float64.  BLAS is limited to one thread by default
(override with OPENBLAS_NUM_THREADS / OMP_NUM_THREADS).

A MODEL is either a sentence-transformers/HF directory holding config.json +
model.safetensors (+ tokenizer.json), or an ONNX file (a BERT export such as
paraphrase-MiniLM-L3-v2/model.onnx).  For an ONNX file the weights are read from the
initializers, following the graph: the word-embedding table is the initializer gathered by
input_ids, and anonymous MatMul initializers (`onnx::MatMul_NNN`, stored [in,out]) are named
after the bias initializer added to their output.  An ONNX model has no tokenizer, so
models/all-MiniLM-L6-v2/tokenizer.json (same uncased vocab) is used unless --tokenizer is
given.

Documents of a --data/--corpus folder: sorted(glob('**/*.txt', recursive)), read as bytes and
decoded as UTF-8 with errors='replace' (one BBC file is Latin-1); label = name of the
top-level folder under the data folder.

Subcommands
-----------
svd --model M --rank K [K ...] [--corpus DIR]
    Truncated SVD (np.linalg.svd, float64, full_matrices=False) of the word-embedding table
    X, reconstruction X' = U_k S_k V_k^T; prints one JSON line per rank with
    token_cos_mean (mean over all vocab rows of cos(x, x')), token_cos_p5
    (np.percentile(cos, 5, method='lower')), rmse (over all elements), norm_ratio
    (mean over rows of |x'|/|x|), token_cos_weighted (cos averaged with weights = count of
    each token id when every corpus document is tokenized with special tokens, no
    truncation, no padding) and energy (sum of the kept squared singular values / total).

embed --model M --data DIR --max-length 128 --out FILE.npy [--limit N]
    numpy forward pass of the BERT encoder (word + position + token_type(0) embeddings,
    LayerNorm, per layer: Q/K/V, softmax(QK^T/sqrt(d) + (1-mask)*(-FLT_MAX)) V, output
    dense + residual + LayerNorm, intermediate dense + exact erf GELU, output dense +
    residual + LayerNorm), mean pooling over the attention mask, L2 normalisation (the
    sentence-transformers embedding).  Documents are tokenized one at a time (truncation to
    max-length including [CLS]/[SEP], no padding) and run with batch 1.  Saves float32
    [n, hidden] to FILE.npy and `label<TAB>path` lines to FILE.labels.txt (FILE = --out
    without its .npy suffix; path = the document path as found under --data).

check-onnx --onnx M.onnx --data DIR [--limit 50] [--max-length 128]
    Runs the numpy forward on the ONNX weights and onnxruntime on the ONNX graph itself
    (padded batches with attention masks), compares the L2-normalised mean-pooled sentence
    embeddings (ONNX output = the rank-2 float output, which is mean pooling WITHOUT
    normalisation; pooling of the rank-3 token output is checked too) and prints max abs
    diff / min cosine plus a description of the graph (outputs, mask constant, inputs).
    Also reports the max error of the numpy erf against math.erf.  Exit status 1 if
    max abs diff >= 1e-4 or min cosine <= 0.99999.

logreg --embeddings FILE.npy [--labels FILE.labels.txt] [--test-fraction 0.2] [--seed 0]
       [--C 0.1 1 10 100]
    Stratified split: by default embslim's own (splitmix64, identical to `embslim
    train-head --seed`), or --split sklearn for train_test_split(stratify, random_state); multinomial
    LogisticRegression (lbfgs, max_iter=5000) for each C; prints JSON with accuracy and
    macro F1 on the held-out split per C (C=1.0 is the default/headline value).
"""
import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import glob
import json
import math
import re
import sys
import time
from collections import defaultdict

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_TOKENIZER = os.path.join(HERE, "..", "models", "all-MiniLM-L6-v2", "tokenizer.json")
FLT_MAX_NEG = -3.4028234663852886e38  # torch.finfo(float32).min, what HF BERT uses for the mask


# ----------------------------------------------------------------------------------------
# erf: piecewise polynomial, built at import time from Chebyshev interpolation of math.erf
# on 24 intervals of width 0.25 over [0, 6) (degree 12).  Max abs error ~1e-15 (see
# erf_self_check); |x| >= 6 -> sign(x) (erfc(6) = 2e-17).
# ----------------------------------------------------------------------------------------
_ERF_H = 0.25
_ERF_N = 24
_ERF_DEG = 12


def _build_erf_table():
    from numpy.polynomial import chebyshev as C
    rows = []
    for i in range(_ERF_N):
        c = (i + 0.5) * _ERF_H
        f = np.vectorize(lambda t, c=c: math.erf(c + 0.5 * _ERF_H * t))
        cheb = C.Chebyshev.interpolate(f, _ERF_DEG)  # in t in [-1, 1]
        rows.append(C.cheb2poly(cheb.coef))  # power basis in t
    return np.array(rows)  # [N, DEG+1], ascending powers


_ERF_TABLE = _build_erf_table()


def erf(x):
    x = np.asarray(x, dtype=np.float64)
    ax = np.abs(x)
    idx = np.minimum((ax * (1.0 / _ERF_H)).astype(np.int64), _ERF_N - 1)
    t = (ax - (idx + 0.5) * _ERF_H) * (2.0 / _ERF_H)
    co = _ERF_TABLE[idx]  # [..., DEG+1]
    y = co[..., _ERF_DEG]
    for k in range(_ERF_DEG - 1, -1, -1):
        y = y * t + co[..., k]
    y = np.where(ax >= _ERF_N * _ERF_H, 1.0, y)
    return np.copysign(y, x)


def erf_self_check():
    xs = np.concatenate([np.linspace(-8, 8, 400001), np.array([0.0, -0.0, 1e-300, 5.999999, 6.0])])
    ref = np.array([math.erf(v) for v in xs])
    return float(np.max(np.abs(erf(xs) - ref)))


def gelu(x):
    return 0.5 * x * (1.0 + erf(x * (1.0 / math.sqrt(2.0))))


# ----------------------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------------------
def canon(name):
    """'model.0.auto_model.encoder.layer.0.x' / 'bert.embeddings.x' -> 'encoder.layer.0.x' ..."""
    for anchor in ("embeddings.", "encoder.", "pooler."):
        m = re.search(r"(^|\.)" + re.escape(anchor), name)
        if m:
            return name[m.start() + (1 if m.group(1) else 0):]
    return name


LINEAR_SUFFIXES = (
    "attention.self.query", "attention.self.key", "attention.self.value",
    "attention.output.dense", "intermediate.dense", "output.dense",
)


class Bert:
    """Flat float64 parameters. lin[name] = (W [in,out], b); ln[name] = (gamma, beta)."""

    def __init__(self, params, linear, n_layers, n_heads, eps, source):
        self.word = params["embeddings.word_embeddings.weight"]
        self.pos = params["embeddings.position_embeddings.weight"]
        self.tt = params["embeddings.token_type_embeddings.weight"]
        self.emb_ln = (params["embeddings.LayerNorm.weight"], params["embeddings.LayerNorm.bias"])
        self.layers = []
        for i in range(n_layers):
            p = "encoder.layer.%d." % i
            L = {}
            for s in LINEAR_SUFFIXES:
                L[s] = (linear[p + s + ".weight"], params[p + s + ".bias"])
            L["attn_ln"] = (params[p + "attention.output.LayerNorm.weight"], params[p + "attention.output.LayerNorm.bias"])
            L["out_ln"] = (params[p + "output.LayerNorm.weight"], params[p + "output.LayerNorm.bias"])
            self.layers.append(L)
        self.hidden = self.word.shape[1]
        self.n_heads = n_heads
        self.eps = eps
        self.source = source
        assert self.hidden % n_heads == 0

    def describe(self):
        return {"source": self.source, "layers": len(self.layers), "heads": self.n_heads,
                "hidden": self.hidden, "intermediate": self.layers[0]["intermediate.dense"][0].shape[1],
                "vocab": self.word.shape[0], "layer_norm_eps": self.eps}


def load_safetensors_dir(d):
    from safetensors.numpy import load_file
    cfg = json.load(open(os.path.join(d, "config.json")))
    raw = load_file(os.path.join(d, "model.safetensors"))
    params, linear = {}, {}
    for k, v in raw.items():
        k = canon(k)
        v = np.asarray(v, dtype=np.float64) if v.dtype.kind == "f" else v
        params[k] = v
        if v.ndim == 2 and k.startswith("encoder.") and k.endswith(".weight"):
            linear[k] = np.ascontiguousarray(v.T)  # torch Linear [out,in] -> [in,out]
    act = cfg.get("hidden_act", "gelu")
    if act != "gelu":
        raise SystemExit("unsupported hidden_act %r (only exact erf gelu)" % act)
    return Bert(params, linear, cfg["num_hidden_layers"], cfg["num_attention_heads"],
                float(cfg.get("layer_norm_eps", 1e-12)), d)


def _onnx_graph(path):
    import onnx
    from onnx import numpy_helper
    m = onnx.load(path)
    g = m.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    consts = {}
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = numpy_helper.to_array(a.t)
    producers = {}
    consumers = defaultdict(list)
    for n in g.node:
        for o in n.output:
            producers[o] = n
        for i in n.input:
            consumers[i].append(n)
    return m, g, inits, consts, producers, consumers


def onnx_word_embedding_name(g, inits):
    for n in g.node:
        if n.op_type == "Gather" and len(n.input) == 2 and n.input[1] == "input_ids" and n.input[0] in inits:
            return n.input[0]
    raise SystemExit("no Gather(initializer, input_ids) in the ONNX graph")


def load_onnx(path):
    from onnx import helper
    m, g, inits, consts, producers, consumers = _onnx_graph(path)
    params, linear = {}, {}
    for name, arr in inits.items():
        if not name.startswith("onnx::"):
            params[canon(name)] = arr.astype(np.float64) if arr.dtype.kind == "f" else arr
    wname = onnx_word_embedding_name(g, inits)
    params["embeddings.word_embeddings.weight"] = inits[wname].astype(np.float64)
    # Linear weights: MatMul(x, W_init) -> Add(bias_init, .) ; name from the bias.
    for n in g.node:
        if n.op_type not in ("MatMul", "Gemm"):
            continue
        w = [i for i in n.input[:2] if i in inits]
        if len(w) != 1:
            continue
        W = inits[w[0]].astype(np.float64)
        bias = None
        if n.op_type == "Gemm":
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            if attrs.get("transB", 0):
                W = W.T
            if len(n.input) > 2 and n.input[2] in inits:
                bias = n.input[2]
        if bias is None:
            for c in consumers[n.output[0]]:
                if c.op_type == "Add":
                    bs = [i for i in c.input if i in inits and i != n.output[0]]
                    if len(bs) == 1:
                        bias = bs[0]
        if bias is None or not bias.endswith(".bias"):
            raise SystemExit("cannot name MatMul weight %s (no bias Add)" % w[0])
        key = canon(bias)[: -len("bias")] + "weight"
        linear[key] = np.ascontiguousarray(W)  # MatMul B is [in,out]
        params.setdefault(canon(bias), inits[bias].astype(np.float64))
    n_layers = 1 + max(int(k.split(".")[2]) for k in params if k.startswith("encoder.layer."))
    info = onnx_graph_info(path, (m, g, inits, consts, producers, consumers))
    hidden = params["embeddings.word_embeddings.weight"].shape[1]
    heads = info.get("attention_heads") or 12
    if hidden % heads:
        heads = 12
    eps = info.get("layer_norm_eps") or 1e-12
    if not info.get("gelu_uses_erf", True):
        raise SystemExit("ONNX graph has no Erf: gelu variant not supported")
    return Bert(params, linear, n_layers, heads, eps, path), info


def onnx_graph_info(path, parsed=None):
    """Describe what matters about the exported graph (outputs, mask constant, inputs...)."""
    from onnx import helper
    m, g, inits, consts, producers, consumers = parsed or _onnx_graph(path)
    info = {"inputs": [i.name for i in g.input],
            "has_token_type_ids_input": any(i.name == "token_type_ids" for i in g.input)}
    ops = [n.op_type for n in g.node]
    info["gelu_uses_erf"] = "Erf" in ops
    info["has_l2_normalize_ops"] = any(o in ops for o in ("ReduceL2", "LpNormalization", "Sqrt"))
    eps = [helper.get_attribute_value(a) for n in g.node if n.op_type == "LayerNormalization"
           for a in n.attribute if a.name == "epsilon"]
    info["layer_norm_eps"] = float(eps[0]) if eps else None
    # heads / head_dim: 1-element int constants concatenated into the attention Reshape shapes
    pairs = set()
    for n in g.node:
        if n.op_type == "Concat" and "attention/self" in n.output[0]:
            vals = [int(consts[i].reshape(-1)[0]) for i in n.input if i in consts and consts[i].size == 1]
            if len(vals) == 2:
                pairs.add(tuple(vals))
    if len(pairs) == 1:
        info["attention_heads"], info["head_dim"] = pairs.pop()
    # attention mask constant: float constant multiplied with (1 - cast(mask))
    mask_consts = []
    for n in g.node:
        if n.op_type == "Mul":
            srcs = [producers.get(i) for i in n.input]
            if any(s is not None and s.op_type == "Sub" for s in srcs):
                for i in n.input:
                    if i in consts and consts[i].dtype.kind == "f":
                        mask_consts.append(float(consts[i].reshape(-1)[0]))
    info["attention_mask_constant"] = mask_consts[0] if len(mask_consts) == 1 else mask_consts
    # token type ids used internally: Gather on the token-type table fed by a constant buffer
    tt = [n for n in g.node if n.op_type == "Gather" and n.input[0] in inits and "token_type" in n.input[0]]
    if tt:
        info["token_type_ids_source"] = "internal constant buffer (zeros), not a graph input" \
            if not info["has_token_type_ids_input"] else "graph input"
    # outputs
    outs = []
    for o in g.output:
        t = o.type.tensor_type
        rank = len(t.shape.dim)
        p = producers.get(o.name)
        desc = {"name": o.name, "elem_type": {1: "float32", 7: "int64"}.get(t.elem_type, t.elem_type),
                "rank": rank, "producer": p.op_type if p else None}
        if p is not None and p.op_type == "Identity":
            desc["meaning"] = "identity copy of graph input %r" % p.input[0]
        elif p is not None and p.op_type == "LayerNormalization":
            desc["meaning"] = "token embeddings (last encoder LayerNorm output) [batch, seq, hidden]"
        elif p is not None and rank == 2 and t.elem_type == 1:
            chain, cur = [], p
            for _ in range(3):
                if cur is None:
                    break
                chain.append(cur.op_type)
                cur = producers.get(cur.input[0]) if cur.input else None
            desc["upstream_ops"] = chain
            desc["meaning"] = ("sentence embedding = masked mean pooling (sum(h*mask)/clip(sum(mask),1e-9)), "
                               "NOT L2-normalised" if "Div" in chain and not info["has_l2_normalize_ops"]
                               else "sentence embedding")
        outs.append(desc)
    info["outputs"] = outs
    return info


def load_model(path):
    if path.endswith(".onnx"):
        return load_onnx(path)[0]
    return load_safetensors_dir(path)


def word_table(path):
    if path.endswith(".onnx"):
        m, g, inits, *_ = _onnx_graph(path)
        return inits[onnx_word_embedding_name(g, inits)]
    from safetensors import safe_open
    with safe_open(os.path.join(path, "model.safetensors"), framework="np") as f:
        for k in f.keys():
            if canon(k) == "embeddings.word_embeddings.weight":
                return f.get_tensor(k)
    raise SystemExit("no word_embeddings in %s" % path)


# ----------------------------------------------------------------------------------------
# tokenizer / corpus
# ----------------------------------------------------------------------------------------
def tokenizer_for(model_path, explicit=None):
    from tokenizers import Tokenizer
    if explicit:
        p = explicit
    elif model_path.endswith(".onnx"):
        p = DEFAULT_TOKENIZER
    else:
        p = os.path.join(model_path, "tokenizer.json")
    tok = Tokenizer.from_file(p)
    tok.no_padding()  # tokenizer.json ships with padding Fixed(128): must be disabled
    tok.no_truncation()
    return tok, os.path.normpath(p)


def list_docs(data, limit=None):
    files = sorted(glob.glob(os.path.join(data, "**", "*.txt"), recursive=True))
    if limit:
        files = files[:limit]
    docs = []
    for f in files:
        rel = os.path.relpath(f, data)
        parts = rel.split(os.sep)
        label = parts[0] if len(parts) > 1 else ""
        with open(f, "rb") as fh:
            text = fh.read().decode("utf-8", errors="replace")
        docs.append((label, f, text))
    return docs


# ----------------------------------------------------------------------------------------
# forward
# ----------------------------------------------------------------------------------------
def layer_norm(x, gb, eps):
    g, b = gb
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def encode(model, ids, mask):
    """ids, mask: int arrays [B, T] -> last hidden state float64 [B, T, H]."""
    B, T = ids.shape
    H, nh = model.hidden, model.n_heads
    hd = H // nh
    x = model.word[ids] + model.pos[np.arange(T)][None] + model.tt[0][None, None]
    x = layer_norm(x, model.emb_ln, model.eps)
    add_mask = (1.0 - mask.astype(np.float64))[:, None, None, :] * FLT_MAX_NEG  # [B,1,1,T]
    scale = 1.0 / math.sqrt(hd)
    for L in model.layers:
        def lin(h, name):
            W, b = L[name]
            return h @ W + b
        q = lin(x, "attention.self.query").reshape(B, T, nh, hd).transpose(0, 2, 1, 3)
        k = lin(x, "attention.self.key").reshape(B, T, nh, hd).transpose(0, 2, 1, 3)
        v = lin(x, "attention.self.value").reshape(B, T, nh, hd).transpose(0, 2, 1, 3)
        s = (q @ k.transpose(0, 1, 3, 2)) * scale + add_mask
        s = s - s.max(-1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(-1, keepdims=True)
        ctx = (p @ v).transpose(0, 2, 1, 3).reshape(B, T, H)
        x = layer_norm(lin(ctx, "attention.output.dense") + x, L["attn_ln"], model.eps)
        inter = gelu(lin(x, "intermediate.dense"))
        x = layer_norm(lin(inter, "output.dense") + x, L["out_ln"], model.eps)
    return x


def mean_pool(h, mask):
    m = mask.astype(np.float64)[..., None]
    return (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)


def l2n(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def embed_docs(model, tok, texts, max_length, progress=False):
    tok.enable_truncation(max_length)
    out = np.zeros((len(texts), model.hidden))
    lengths = []
    t0 = time.time()
    for i, t in enumerate(texts):
        ids = np.array([tok.encode(t).ids], dtype=np.int64)
        mask = np.ones_like(ids)
        lengths.append(ids.shape[1])
        out[i] = l2n(mean_pool(encode(model, ids, mask), mask))[0]
        if progress and (i + 1) % 100 == 0:
            print("  %d/%d docs, %.1fs" % (i + 1, len(texts), time.time() - t0), file=sys.stderr, flush=True)
    return out, lengths


# ----------------------------------------------------------------------------------------
# subcommands
# ----------------------------------------------------------------------------------------
def cmd_svd(a):
    X = np.asarray(word_table(a.model), dtype=np.float64)
    counts = None
    if a.corpus:
        tok, tok_path = tokenizer_for(a.model, a.tokenizer)
        counts = np.zeros(X.shape[0], dtype=np.float64)
        docs = list_docs(a.corpus)
        for enc in tok.encode_batch([d[2] for d in docs]):
            np.add.at(counts, np.asarray(enc.ids, dtype=np.int64), 1.0)
    U, S, Vt = np.linalg.svd(X, full_matrices=False)
    nx = np.linalg.norm(X, axis=1)
    for k in a.rank:
        Xr = (U[:, :k] * S[:k]) @ Vt[:k]
        nr = np.linalg.norm(Xr, axis=1)
        cos = np.einsum("ij,ij->i", X, Xr) / np.maximum(nx * nr, 1e-300)
        res = {"cmd": "svd", "model": a.model, "rank": k, "vocab": X.shape[0], "dim": X.shape[1],
               "token_cos_mean": float(cos.mean()),
               "token_cos_p5": float(np.percentile(cos, 5, method="lower")),
               "rmse": float(np.sqrt(np.mean((X - Xr) ** 2))),
               "norm_ratio": float(np.mean(nr / nx)),
               "energy": float((S[:k] ** 2).sum() / (S ** 2).sum())}
        if counts is not None:
            res["token_cos_weighted"] = float((counts * cos).sum() / counts.sum())
            res["corpus_tokens"] = int(counts.sum())
            res["corpus_docs"] = len(docs)
            res["tokenizer"] = tok_path
        print(json.dumps(res), flush=True)


def labels_path_for(npy):
    base = npy[:-4] if npy.endswith(".npy") else npy
    return base + ".labels.txt"


def cmd_embed(a):
    if a.model.endswith(".onnx"):
        model, _ = load_onnx(a.model)
    else:
        model = load_safetensors_dir(a.model)
    tok, tok_path = tokenizer_for(a.model, a.tokenizer)
    docs = list_docs(a.data, a.limit)
    t0 = time.time()
    E, lengths = embed_docs(model, tok, [d[2] for d in docs], a.max_length, progress=True)
    np.save(a.out, E.astype(np.float32))
    lp = labels_path_for(a.out)
    with open(lp, "w", encoding="utf-8") as f:
        for label, path, _ in docs:
            f.write("%s\t%s\n" % (label, path))
    print(json.dumps({"cmd": "embed", "model": model.describe(), "tokenizer": tok_path, "docs": len(docs),
                      "max_length": a.max_length, "mean_tokens": float(np.mean(lengths)),
                      "truncated_docs": int(sum(l == a.max_length for l in lengths)),
                      "out": a.out, "labels": lp, "shape": list(E.shape),
                      "seconds": round(time.time() - t0, 1)}), flush=True)


def cmd_check_onnx(a):
    import onnxruntime as ort
    model, info = load_onnx(a.onnx)
    tok, tok_path = tokenizer_for(a.onnx, a.tokenizer)
    docs = list_docs(a.data, a.limit)
    texts = [d[2] for d in docs]
    ref, lengths = embed_docs(model, tok, texts, a.max_length)

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(a.onnx, so, providers=["CPUExecutionProvider"])
    outs = sess.get_outputs()
    sent_name = [o.name for o in outs if o.type == "tensor(float)" and len(o.shape) == 2]
    tokemb_name = [o.name for o in outs if o.type == "tensor(float)" and len(o.shape) == 3]
    assert len(sent_name) == 1 and len(tokemb_name) == 1, [(o.name, o.type, o.shape) for o in outs]
    sent_name, tokemb_name = sent_name[0], tokemb_name[0]
    tok.enable_truncation(a.max_length)
    ort_sent, ort_pool, raw_norms = [], [], []
    for s in range(0, len(texts), a.batch):
        encs = [tok.encode(t) for t in texts[s:s + a.batch]]
        T = max(len(e.ids) for e in encs)
        ids = np.zeros((len(encs), T), dtype=np.int64)
        mask = np.zeros((len(encs), T), dtype=np.int64)
        for i, e in enumerate(encs):
            ids[i, :len(e.ids)] = e.ids
            mask[i, :len(e.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        feeds = {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}}
        sv, tv = sess.run([sent_name, tokemb_name], feeds)
        raw_norms.extend(np.linalg.norm(sv, axis=1).tolist())
        ort_sent.append(l2n(sv.astype(np.float64)))
        ort_pool.append(l2n(mean_pool(tv.astype(np.float64), mask)))
    ort_sent = np.concatenate(ort_sent)
    ort_pool = np.concatenate(ort_pool)

    def cmp(x):
        return float(np.abs(x - ref).max()), float(np.einsum("ij,ij->i", x, ref).min())

    d1, c1 = cmp(ort_sent)
    d2, c2 = cmp(ort_pool)
    ok = max(d1, d2) < 1e-4 and min(c1, c2) > 0.99999
    print(json.dumps({
        "cmd": "check-onnx", "onnx": a.onnx, "tokenizer": tok_path, "docs": len(docs),
        "max_length": a.max_length, "ort_batch": a.batch, "mean_tokens": float(np.mean(lengths)),
        "numpy_model": model.describe(),
        "sentence_output": sent_name, "token_output": tokemb_name,
        "max_abs_diff": d1, "min_cosine": c1,
        "max_abs_diff_pool_of_token_output": d2, "min_cosine_pool_of_token_output": c2,
        "ort_sentence_output_norm_min": float(min(raw_norms)), "ort_sentence_output_norm_max": float(max(raw_norms)),
        "erf_max_abs_err_vs_math_erf": erf_self_check(),
        "graph": info, "pass": ok}), flush=True)
    if not ok:
        sys.exit(1)


def splitmix_split(y, test_fraction, seed):
    """embslim's stratified split (src/train/head.rs): classes in sorted order; within a
    class the document indices (ascending) are shuffled by Fisher-Yates from the end with
    j = splitmix64() % (i + 1), one splitmix64 stream for the whole split; the first
    round(fraction * n_class) go to the test set (round half away from zero, as Rust)."""
    M = (1 << 64) - 1
    state = [seed & M]

    def nxt():
        state[0] = (state[0] + 0x9E3779B97F4A7C15) & M
        z = state[0]
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
        return z ^ (z >> 31)

    train, test = [], []
    for c in sorted(set(y.tolist())):
        idx = [i for i in range(len(y)) if y[i] == c]
        for i in range(len(idx) - 1, 0, -1):
            j = nxt() % (i + 1)
            idx[i], idx[j] = idx[j], idx[i]
        n_test = int(math.floor(test_fraction * len(idx) + 0.5))
        test += idx[:n_test]
        train += idx[n_test:]
    return np.array(sorted(train)), np.array(sorted(test))


def cmd_logreg(a):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import train_test_split
    X = np.load(a.embeddings).astype(np.float64)
    lp = a.labels
    if lp is None:
        for cand in (labels_path_for(a.embeddings), a.embeddings + ".labels.txt"):
            if os.path.exists(cand):
                lp = cand
                break
    if lp is None:
        raise SystemExit("no labels sidecar found for %s (use --labels)" % a.embeddings)
    with open(lp, encoding="utf-8") as f:
        y = np.array([line.rstrip("\n").split("\t")[0] for line in f if line.strip()])
    assert len(y) == X.shape[0], (len(y), X.shape)
    if a.split == "embslim":
        tr, te = splitmix_split(y, a.test_fraction, a.seed)
        Xtr, Xte, ytr, yte = X[tr], X[te], y[tr], y[te]
    else:
        Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=a.test_fraction, random_state=a.seed, stratify=y)
    results = []
    for C in a.C:
        clf = LogisticRegression(C=C, solver="lbfgs", max_iter=5000)  # multinomial for >2 classes
        clf.fit(Xtr, ytr)
        p = clf.predict(Xte)
        results.append({"C": C, "accuracy": float(accuracy_score(yte, p)),
                        "macro_f1": float(f1_score(yte, p, average="macro")),
                        "n_iter": int(np.max(clf.n_iter_))})
    default = next((r for r in results if r["C"] == 1.0), results[0])
    print(json.dumps({"cmd": "logreg", "embeddings": a.embeddings, "labels": lp, "n": int(X.shape[0]),
                      "dim": int(X.shape[1]), "n_train": int(len(ytr)), "n_test": int(len(yte)),
                      "classes": sorted(set(y.tolist())), "test_fraction": a.test_fraction, "seed": a.seed, "split": a.split,
                      "accuracy": default["accuracy"], "macro_f1": default["macro_f1"], "default_C": default["C"],
                      "per_C": results}), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("svd", help="truncated-SVD reconstruction quality of the word-embedding table")
    p.add_argument("--model", required=True)
    p.add_argument("--rank", type=int, nargs="+", required=True)
    p.add_argument("--corpus")
    p.add_argument("--tokenizer")
    p.set_defaults(fn=cmd_svd)

    p = sub.add_parser("embed", help="numpy BERT forward + mean pooling + L2 norm over a corpus")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--out", required=True)
    p.add_argument("--limit", type=int)
    p.add_argument("--tokenizer")
    p.set_defaults(fn=cmd_embed)

    p = sub.add_parser("check-onnx", help="numpy forward of ONNX weights vs onnxruntime")
    p.add_argument("--onnx", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch", type=int, default=8, help="onnxruntime batch size (padded, masked)")
    p.add_argument("--tokenizer")
    p.set_defaults(fn=cmd_check_onnx)

    p = sub.add_parser("logreg", help="stratified split + logistic regression on saved embeddings")
    p.add_argument("--embeddings", required=True)
    p.add_argument("--labels")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--C", type=float, nargs="+", default=[0.1, 1.0, 10.0, 100.0])
    p.add_argument("--split", choices=["embslim", "sklearn"], default="embslim",
                   help="embslim: the same splitmix64 stratified split as `embslim train-head`; sklearn: train_test_split")
    p.set_defaults(fn=cmd_logreg)

    a = ap.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
