#!/usr/bin/env python3
"""Memory benchmark for the footprint issue's targets, in one invocation on the same inputs:
the first 100 BBC News documents classified one at a time at 128 tokens.

- embslim classify on the default bundle (a head is trained on it if it has none), with the
  int4 weights expanded to f32 (the default) and kept packed (`--packed`); peak RSS of the process (/usr/bin/time), against the target peak
  RSS <= bundle bytes + 15 MB;
- the factor file's resident part after those documents (`footprint --docs 100`), against
  the target <= 25 % of the file;
- onnxruntime on the original model, fp32 and quantize_dynamic int8 per channel (the same
  child as tools/bench_speed.py: our lossless body with the f32 table gathered by numpy), on
  the same documents: its peak RSS, and ours as a ratio of it.

Needs /usr/bin/time (Debian: apt-get install time).
Usage: python3 tools/bench_memory.py [--bin target/debug/embslim] [--bundle out/minilm-default]
Peak RSS counts the binary's resident pages: pass the device build for this machine (bash
cross/build.sh x86_64-unknown-linux-gnu: release, non-PIE, no unwind tables, as the ARM
builds) for figures a device would see.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_speed  # noqa: E402  (its onnxruntime child and bundles)

ROOT = bench_speed.ROOT
DOCS = 100
TARGET_OVER_BUNDLE = 15e6
TARGET_RESIDENT = 0.25


def run_measured(args, stdin_path=None):
    """Run args under /usr/bin/time: (peak RSS bytes,
    stdout). Not os.wait4 on a fork of this process: Linux keeps the forked Python's
    high-water mark in the child's ru_maxrss across exec."""
    with tempfile.NamedTemporaryFile() as t:
        stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL
        out = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", t.name, *args], stdin=stdin, capture_output=True)
        if out.returncode != 0:
            sys.exit(f"{' '.join(args[:3])} failed: {out.stderr.decode(errors='replace')[-2000:]}")
        return int(open(t.name).read().split()[-1]) * 1024, out.stdout


def first_docs(n):
    """A file of the first n BBC News documents, one per line (written once, in out/bench)."""
    os.makedirs(bench_speed.OUT, exist_ok=True)
    docs = os.path.join(bench_speed.OUT, f"bbc-first-{n}.txt")
    if not os.path.exists(docs):
        from glob import glob
        with open(docs + ".tmp", "w") as f:
            for d in sorted(glob(os.path.join(ROOT, "models/bbc-news/**/*.txt"), recursive=True))[:n]:
                f.write(open(d, encoding="utf-8", errors="replace").read().replace("\n", " ") + "\n")
        os.replace(docs + ".tmp", docs)
    return docs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "debug/embslim"))
    ap.add_argument("--bundle", default=os.path.join(ROOT, "out/minilm-default"))
    a = ap.parse_args()
    docs = first_docs(DOCS)
    if not os.path.exists(os.path.join(a.bundle, "head.safetensors")):
        subprocess.run([a.bin, "train-head", a.bundle, "--data", os.path.join(ROOT, "models/bbc-news"), "--max-length", "128"],
                       check=True, stdout=subprocess.DEVNULL)
    manifest = json.load(open(os.path.join(a.bundle, "manifest.json")))
    bundle_bytes = sum(e["bytes"] for e in manifest["files"].values()) + os.path.getsize(os.path.join(a.bundle, "manifest.json"))

    rows = []
    _, lossless = bench_speed.bundles(a.bin, schemes=[])
    table = os.path.join(lossless, "factors.safetensors")
    tok = os.path.join(lossless, "tokenizer.json")
    for name, model in bench_speed.ort_models(lossless).items():
        if name == "ort-int8-tensor":
            continue
        rss, out = run_measured([sys.executable, "-c", bench_speed.ORT_CHILD, model, table, docs, tok, "1", str(DOCS)])
        rows.append((name + " (python, numpy, f32 table)", rss, None))
    ort = {n.split(" ")[0]: r for n, r, _ in rows}
    for label, extra in (("embslim classify, int4 expanded (default)", []), ("embslim classify --packed", ["--packed"])):
        rss, out = run_measured([a.bin, "classify", a.bundle, "--max-length", "128", *extra], stdin_path=docs)
        assert len(out.splitlines()) == DOCS, "one label per document"
        fp = json.loads(subprocess.run([a.bin, "footprint", a.bundle, "--texts", docs, "--docs", str(DOCS), "--runs", "1",
                                        "--lengths", "128", "--max-length", "128", "--json", *extra],
                                       check=True, capture_output=True, text=True).stdout)
        rows.append((label, rss, fp))

    print(f"bundle {a.bundle}: {bundle_bytes / 1e6:.2f} MB; binary {os.path.getsize(a.bin) / 1e6:.1f} MB ({a.bin})")
    print(f"| run ({DOCS} BBC docs, 128 tokens, batch 1, 1 thread) | peak RSS MB | minus bundle MB (target <= 15) "
          f"| vs ort fp32 | vs ort int8 | peak heap MB | factor resident (target <= 25 %) |")
    print("|---|---|---|---|---|---|---|")
    for name, rss, fp in rows:
        over = "" if fp is None else f"{(rss - bundle_bytes) / 1e6:.1f} ({'met' if rss - bundle_bytes <= TARGET_OVER_BUNDLE else 'not met'})"
        heap = "" if fp is None else f"{fp['peak_heap_by_stage'][2][1] / 1e6:.1f}"
        res = ""
        if fp is not None and fp["factor_resident_bytes"] is not None:
            share = fp["factor_resident_bytes"] / fp["factor_file_bytes"]
            res = f"{fp['factor_resident_bytes'] / 1e6:.2f} of {fp['factor_file_bytes'] / 1e6:.2f} MB, {100 * share:.0f} % ({'met' if share <= TARGET_RESIDENT else 'not met'})"
        print(f"| {name} | {rss / 1e6:.1f} | {over} | {rss / ort['ort-fp32']:.2f}x | {rss / ort['ort-int8-channel']:.2f}x | {heap} | {res} |")


if __name__ == "__main__":
    main()
