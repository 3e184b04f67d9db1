#!/usr/bin/env python3
"""Speed and memory benchmark: embslim bundles in each body weight scheme against
onnxruntime on the same model (fp32, and quantize_dynamic int8 per-tensor and
per-channel), same inputs, in one invocation.

Inputs: BBC News documents truncated to 32 and 128 tokens, batch 1, 1 and 2 threads.
Prints median latency, peak RSS, file bytes and the ratios to onnxruntime (latency to
int8 per-channel, peak RSS to fp32 and int8) for each configuration, int4 also with
`--packed` (weights kept Q4_0 in tract). Every configuration runs in its own process so
its peak RSS is its own.

onnxruntime runs our lossless body.onnx (the original all-MiniLM-L6-v2 weights without
the word-embedding lookup, which costs microseconds) with inputs_embeds gathered by numpy.

Usage: python3 tools/bench_speed.py [--runs 30] [--bin target/debug/embslim]
(peak RSS counts the binary's resident pages: pass a release build for device figures)
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models/all-MiniLM-L6-v2")
OUT = os.path.join(ROOT, "out/bench")
SCHEMES = ["f32", "f16", "int8", "int4"]


def sh(*args, **kw):
    return subprocess.run(args, check=True, **kw)


def bundles(binary, schemes=SCHEMES):
    """Our bundle in each body scheme (default table), and the lossless one onnxruntime runs."""
    os.makedirs(OUT, exist_ok=True)
    paths = {}
    for w in schemes:
        p = os.path.join(OUT, f"minilm-default-table-{w}")
        if not os.path.exists(os.path.join(p, "manifest.json")):
            sh(binary, "compress", "--model", MODEL, "--out", p, "--weights", w, "--max-length", "128",
               stdout=subprocess.DEVNULL)
        paths[w] = p
    lossless = os.path.join(OUT, "minilm-none-f32")
    if not os.path.exists(os.path.join(lossless, "manifest.json")):
        sh(binary, "compress", "--model", MODEL, "--out", lossless, "--method", "none", "--weights", "f32", "--max-length", "128",
           stdout=subprocess.DEVNULL)
    return paths, lossless


def dir_bytes(p):
    return sum(os.path.getsize(os.path.join(p, f)) for f in os.listdir(p))


def ours(binary, bundle, threads, runs, texts, *extra):
    out = subprocess.run([binary, "footprint", bundle, "--texts", texts, "--runs", str(runs), "--docs", "1",
                          "--lengths", "32,128", "--threads", str(threads), "--json", *extra],
                         check=True, capture_output=True, text=True)
    r = json.loads(out.stdout)
    # VmHWM once the batch-1 latency runs are done, as for onnxruntime: footprint's last
    # stage (batches of 8 for throughput) is not part of this comparison
    rss = dict(r["peak_rss_by_stage"])["latency"]
    return {"lat": {int(k): v["p50"] for k, v in r["latency_ms"].items()}, "rss": rss, "bytes": r["bundle_bytes"]}


ORT_CHILD = r'''
import json, sys, time, resource
import numpy as np, onnxruntime as ort
from safetensors.numpy import load_file
model, table_path, texts, tok_path, threads, runs = sys.argv[1:7]
threads, runs = int(threads), int(runs)
so = ort.SessionOptions(); so.intra_op_num_threads = threads; so.inter_op_num_threads = 1
sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
f = load_file(table_path)
# rows are stored in corpus-frequency order: row_of_token maps a token to its row
table = f["table"][f["row_of_token"]] if "row_of_token" in f else f["table"]
from tokenizers import Tokenizer
tok = Tokenizer.from_file(tok_path); tok.no_padding(); tok.no_truncation()
docs = [l for l in open(texts, encoding="utf-8", errors="replace").read().split("\n") if l.strip()]
names = [i.name for i in sess.get_inputs()]
res = {}
for n in (32, 128):
    ids = [e.ids[:n - 1] + [e.ids[-1]] for e in (tok.encode(d) for d in docs) if len(e.ids) >= n]
    ms = []
    for i in range(runs + 3):
        x = np.array(ids[i % len(ids)], dtype=np.int64)[None, :]
        feed = {"inputs_embeds": table[x], "attention_mask": np.ones_like(x)}
        if "token_type_ids" in names:
            feed["token_type_ids"] = np.zeros_like(x)
        t = time.perf_counter(); sess.run(None, feed); dt = (time.perf_counter() - t) * 1e3
        if i >= 3: ms.append(dt)
    res[n] = float(np.median(ms))
print(json.dumps({"lat": res, "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
'''


def ort_models(lossless):
    from onnxruntime.quantization import QuantType, quantize_dynamic
    body = os.path.join(lossless, "body.onnx")
    out = {"ort-fp32": body}
    for name, per_channel in (("ort-int8-tensor", False), ("ort-int8-channel", True)):
        p = os.path.join(OUT, name + ".onnx")
        if not os.path.exists(p):
            quantize_dynamic(body, p, weight_type=QuantType.QInt8, per_channel=per_channel)
        out[name] = p
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "debug/embslim"))
    a = ap.parse_args()
    paths, lossless = bundles(a.bin)
    texts = os.path.join(OUT, "bbc-lines.txt")
    if not os.path.exists(texts):
        import glob
        docs = sorted(glob.glob(os.path.join(ROOT, "models/bbc-news/**/*.txt"), recursive=True))[::20]
        with open(texts, "w") as f:
            for d in docs:
                f.write(open(d, encoding="utf-8", errors="replace").read().replace("\n", " ") + "\n")
    rows = []
    ort_paths = ort_models(lossless)
    table = os.path.join(lossless, "factors.safetensors")
    tok = os.path.join(lossless, "tokenizer.json")
    for threads in (1, 2):
        for name, model in ort_paths.items():
            out = subprocess.run([sys.executable, "-c", ORT_CHILD, model, table, texts, tok, str(threads), str(a.runs)],
                                 check=True, capture_output=True, text=True)
            r = json.loads(out.stdout)
            r["lat"] = {int(k): v for k, v in r["lat"].items()}
            # onnxruntime needs the table too: count the model file plus the f32 table
            # (our lossless body keeps its weights beside it, as ONNX external data)
            data = model + ".data"
            r["bytes"] = os.path.getsize(model) + (os.path.getsize(data) if os.path.exists(data) else 0) + os.path.getsize(table)
            rows.append((name, threads, r))
        for w, p in paths.items():
            rows.append((f"embslim default table + {w} body", threads, ours(a.bin, p, threads, a.runs, texts)))
        rows.append(("embslim default table + int4 body --packed", threads, ours(a.bin, paths["int4"], threads, a.runs, texts, "--packed")))
    print("| config | threads | p50 ms seq 32 | p50 ms seq 128 | latency vs ort int8 (seq 128) | peak RSS MB | RSS vs ort fp32 | RSS vs ort int8 | file MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, threads, r in rows:
        ref = next(x for n, t, x in rows if n == "ort-int8-channel" and t == threads)
        fp32 = next(x for n, t, x in rows if n == "ort-fp32" and t == threads)
        print(f"| {name} | {threads} | {r['lat'][32]:.2f} | {r['lat'][128]:.2f} | {r['lat'][128] / ref['lat'][128]:.2f}x | "
              f"{r['rss'] / 1e6:.1f} | {r['rss'] / fp32['rss']:.2f}x | {r['rss'] / ref['rss']:.2f}x | {r['bytes'] / 1e6:.1f} |")


if __name__ == "__main__":
    main()
