#!/usr/bin/env python3
"""Which 4 KB pages of a mixed factor file classifying the first N BBC documents touches,
computed from the file layout (no runtime): reproduces `embslim footprint --docs N`'s
factor residency and compares the stored layout (codes and scales in separate tensors)
with an interleaved one (each row's scales next to its codes) and with the bytes of the
touched rows alone (the floor at byte granularity); then, for tables of uniform rows in
corpus-frequency order, the residency by row size.

Usage: python3 tools/residency_sim.py BUNDLE [N=100] [MAX_LENGTH=the manifest's]
"""
import glob
import json
import struct
import sys

import numpy as np
from tokenizers import Tokenizer

PAGE = 4096
bundle = sys.argv[1]
n_docs = int(sys.argv[2]) if len(sys.argv) > 2 else 100
b = open(f"{bundle}/factors.safetensors", "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
base = 8 + n
meta = h["__metadata__"]
assert meta["method"] == "mixed", "a mixed factor file is expected"
tiers = json.loads(meta["tiers"])
d = int(meta["dim"])
lo, hi = h["row_of_token"]["data_offsets"]
row_of_token = np.frombuffer(b[base + lo:base + hi], dtype=np.uint32)
manifest = json.load(open(f"{bundle}/manifest.json"))
tok = Tokenizer.from_file(f"{bundle}/tokenizer.json")
tok.enable_truncation(int(sys.argv[3]) if len(sys.argv) > 3 else manifest["max_length"])
ids = set()
for doc in sorted(glob.glob("models/bbc-news/**/*.txt", recursive=True))[:n_docs]:
    ids.update(tok.encode(open(doc, encoding="utf-8", errors="replace").read()).ids)
rows = sorted(int(row_of_token[t]) for t in ids)


def pages(interleaved):
    touched = {("order", (base + lo + 4 * t) // PAGE) for t in ids}
    start = 0
    for i, t in enumerate(tiers):
        rb, sb = d * t["bits"] // 8, 2 * (d // t["block"])
        for r in rows:
            if not start <= r < start + t["rows"]:
                continue
            k = r - start
            if interleaved:
                o = k * (rb + sb)
                touched.update(("tier", i, p) for p in range(o // PAGE, (o + rb + sb - 1) // PAGE + 1))
            else:
                for name, width in ((f"tier{i}.codes", rb), (f"tier{i}.scale", sb)):
                    o = base + h[name]["data_offsets"][0] + k * width
                    touched.update(("file", p) for p in range(o // PAGE, (o + width - 1) // PAGE + 1))
        start += t["rows"]
    return len(touched)


total = len(b) // PAGE
print(f"{len(ids)} distinct tokens in the first {n_docs} documents; file of {total} pages")
for name, inter in (("stored layout", False), ("interleaved rows", True)):
    p = pages(inter)
    print(f"{name}: {p} pages ({p * PAGE / 1e6:.2f} MB, {100 * p / total:.0f} %)")
# the floor no layout of these rows can beat: the bytes of the touched rows and their
# order entries, as if memory were paged by the byte
touched, start = 4 * len(ids), 0
for t in tiers:
    touched += sum(1 for r in rows if start <= r < start + t["rows"]) * (d * t["bits"] // 8 + 2 * (d // t["block"]))
    start += t["rows"]
print(f"bytes of the touched rows alone: {touched / 1e6:.2f} MB ({100 * touched / len(b):.0f} %)")

# Any table whose rows all have the same size, stored in corpus-frequency order (the
# order `compress` writes; counted here on the whole BBC corpus, these documents included),
# with the same 4-byte row_of_token index: what residency would these documents leave,
# by row size? 150 bytes is a 10x table of all-MiniLM-L6-v2, 1536 the f32 one.
counts = np.zeros(len(row_of_token))
for doc in sorted(glob.glob("models/bbc-news/**/*.txt", recursive=True)):
    for t in tok.encode(open(doc, encoding="utf-8", errors="replace").read()).ids:
        counts[t] += 1
rank = np.empty(len(counts), dtype=np.int64)
rank[np.lexsort((np.arange(len(counts)), -counts))] = np.arange(len(counts))
print("uniform rows in frequency order (row bytes: resident pages of the file):")
for rb in (54, 102, 150, 216, 408, 768, 1536):
    index = 4 * len(counts)
    touched = {(4 * t) // PAGE for t in ids}
    for t in ids:
        o = index + rank[t] * rb
        touched.update(range(o // PAGE, (o + rb - 1) // PAGE + 1))
    size = (index + len(counts) * rb) / PAGE
    print(f"  {rb:5d} B: {len(touched)} of {size:.0f} pages, {100 * len(touched) / size:.0f} %")
