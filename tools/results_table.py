#!/usr/bin/env python3
"""Markdown table from the JSON lines that tools/results.sh writes."""
import json
import os
import sys

res = sys.argv[1]


def lines(name):
    p = os.path.join(res, name)
    return [json.loads(l) for l in open(p) if l.strip()] if os.path.exists(p) else []


comp = {os.path.basename(c["out"].rstrip("/")): c for c in lines("compress.jsonl")}
# eval*.jsonl: one file per eval run (a run may be split in parts)
ev = {os.path.basename(e["bundle"].rstrip("/")): e
      for name in sorted(os.listdir(res)) if name.startswith("eval") and name.endswith(".jsonl")
      for e in lines(name)}
print("| bundle | method | rank | ratio (params) | ratio (bytes) | token cos mean | p5 | weighted | rmse | norm ratio | train s | sentence cos mean | p5 | min | BBC accuracy |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
f = lambda v, p=4: "n/a" if v is None else (f"{v:.{p}f}" if isinstance(v, float) else str(v))
order = lambda n: (["none", "int8", "int4"].index(n) if n in ("none", "int8", "int4") else 3,
                   n.split("-r")[0], -int(n.split("-r")[1]) if "-r" in n else 0)
for name, c in sorted(comp.items(), key=lambda kv: order(kv[0])):
    e = ev.get(name, {})
    acc = e.get("accuracy")
    print(f"| {name} | {c['method']} | {f(c['rank'])} | {f(c['ratio_params'], 2)} | {f(c['ratio_bytes'], 2)} | "
          f"{f(c['token_cos_mean'])} | {f(c['token_cos_p5'])} | {f(c['token_cos_weighted'])} | {f(c['rmse'])} | "
          f"{f(c['norm_ratio'])} | {f(c['train_seconds'], 1)} | {f(e.get('cos_mean'))} | {f(e.get('cos_p5'))} | "
          f"{f(e.get('cos_min'))} | {'n/a' if acc is None else f'{100 * acc:.2f} %'} |")
