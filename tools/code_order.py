#!/usr/bin/env python3
"""Write cross/order/TARGET.txt: the order in which cross/build.sh links the device binary's
functions (build.rs hands the file to lld as its symbol ordering file).

Why: the kernel maps a program's code 64 KB around every page that faults in, so running
1.5 MB of functions scattered over 10 MB of text kept 9 MB of it resident. The list puts
first the functions inference runs (classify, with the int4 weights expanded and --packed),
then those only the load runs; src/code.rs drops the code pages once a bundle is loaded, so
inference faults back in little more than its own functions.

How: the release build of TARGET (`bash cross/build.sh TARGET` links with symbols and strips
the copy it hands out; this reads the linked one) classifies the first BBC documents of the
bundle, at 128 tokens:
- x86_64-unknown-linux-gnu (this machine): under valgrind's callgrind, which dumps its
  counts before every Bundle::classify_batch call: functions of the first dump ran in the
  load, those of the later dumps in inference.
- ARM targets: under their qemu-user runner with `-d in_asm`, which logs every translated
  block once, in the order they first run. A function is inference's if qemu first ran it
  after the first classify_batch, or if it is in the x86_64 list's inference part under the
  same name (names compared without their hashes, which differ between targets): so the
  x86_64 list must be written first. The ARM-only functions the load runs are the load's.

Usage: python3 tools/code_order.py TARGET [--bundle out/minilm-default] [--docs 2]
Then rebuild: bash cross/build.sh TARGET (the changed list relinks the binary).
"""
import argparse
import bisect
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_memory  # noqa: E402  (the first BBC documents, one per line)

ROOT = bench_memory.ROOT
HOST = "x86_64-unknown-linux-gnu"
CLASSIFY = re.compile(r"6Bundle14classify_batch")
# legacy (_ZN...17h<hash>E) and v0 (_R... Cs<hash>_) manglings: the hashes derive from each
# crate's build metadata, which includes the target
HASHES = re.compile(r"17h[0-9a-f]{16}E$|Cs[0-9A-Za-z]+_")


def text_symbols(binary, target):
    """name -> (address, size) of the binary's code symbols. On 32-bit ARM, bit 0 of a
    function's symbol only marks Thumb code: cleared, as in the addresses qemu logs."""
    thumb = ~1 if target.startswith("armv7") else ~0
    out = subprocess.run(["nm", "-S", "--defined-only", binary], check=True, capture_output=True, text=True).stdout
    syms = {}
    for line in out.splitlines():
        p = line.split()
        if len(p) == 4 and p[2] in "tTwW":
            syms[p[3]] = (int(p[0], 16) & thumb, int(p[1], 16))
    return syms


def classify_args(binary, bundle, packed):
    return [binary, "classify", bundle, "--max-length", "128", *(["--packed"] if packed else [])]


def callgrind_phases(binary, syms, bundle, docs, packed):
    """(load functions, inference functions) of one classify run under callgrind."""
    marker = next(n for n in syms if CLASSIFY.search(n))
    with tempfile.TemporaryDirectory() as tmp:
        base = os.path.join(tmp, "cg.out")
        with open(docs, "rb") as stdin:
            subprocess.run(["valgrind", "--tool=callgrind", "--demangle=no", "--dump-instr=no", f"--dump-before={marker}",
                            f"--callgrind-out-file={base}", *classify_args(binary, bundle, packed)],
                           stdin=stdin, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # cg.out.1 is the load (dumped before the first classify_batch); cg.out.2... and the
        # final cg.out are inference
        numbered = sorted((f for f in os.listdir(tmp) if f != "cg.out"), key=lambda f: int(f.rsplit(".", 1)[1]))
        phases = dump_functions([os.path.join(tmp, f) for f in numbered + ["cg.out"]])
    return phases[0], set().union(*phases[1:])


def dump_functions(paths):
    """The functions with costs in each callgrind dump. callgrind names a function once,
    "fn=(id) name" or "cfn=(id) name", possibly in an earlier dump, and by "(id)" after
    that, so ids are resolved once every dump is read."""
    names, phases = {}, []
    for path in paths:
        ran, cur = set(), None
        for line in open(path, errors="replace"):
            m = re.match(r"(c?)fn=(?:\((\d+)\))? ?(.*)", line.rstrip("\n"))
            if m:
                key = m.group(2) or m.group(3)
                if m.group(3):
                    names.setdefault(key, m.group(3))
                if not m.group(1):
                    cur = key
            elif cur and (line[:1].isdigit() or line[:1] in "+-*"):
                ran.add(cur)
        phases.append(ran)
    # without the recursion-depth suffix callgrind adds ('2)
    return [{re.sub(r"'\d+$", "", names[k]) for k in ran if k in names} for ran in phases]


def qemu_run_order(binary, syms, target, bundle, docs, packed):
    """Functions in the order qemu first ran them, and how many ran before classify_batch."""
    runner = subprocess.run(["bash", "-c", f'source "{ROOT}/cross/common.sh"; runner_for {target}'],
                            check=True, capture_output=True, text=True).stdout.split()
    starts = sorted((a, s, n) for n, (a, s) in syms.items() if s > 0)
    keys = [a for a, _, _ in starts]
    order, seen, before = [], set(), None
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "in_asm.log")
        with open(docs, "rb") as stdin:
            subprocess.run([*runner, "-d", "in_asm", "-D", log, *classify_args(binary, bundle, packed)],
                           stdin=stdin, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for line in open(log, errors="replace"):
            m = re.match(r"0x([0-9a-f]+):", line)
            if not m:
                continue
            addr = int(m.group(1), 16)
            i = bisect.bisect_right(keys, addr) - 1
            if i < 0 or addr >= keys[i] + starts[i][1]:
                continue
            name = starts[i][2]
            if before is None and CLASSIFY.search(name):
                before = len(order)
            if name not in seen:
                seen.add(name)
                order.append(name)
    return order, len(order) if before is None else before


def inference_keys(path):
    """The names, without hashes, of an order file's '# inference' part."""
    keys, part = set(), None
    for line in open(path):
        line = line.strip()
        if line.startswith("#"):
            part = line[2:] if line in ("# inference", "# load") else part
        elif line and part == "inference":
            keys.add(HASHES.sub("", line))
    return keys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("target")
    ap.add_argument("--bundle", default=os.path.join(ROOT, "out/minilm-default"))
    ap.add_argument("--docs", type=int, default=2)
    a = ap.parse_args()
    host_order = os.path.join(ROOT, "cross/order", f"{HOST}.txt")
    if a.target == HOST and not shutil.which("valgrind"):
        sys.exit("needs valgrind (Debian: apt-get install valgrind)")
    if a.target != HOST and not os.path.exists(host_order):
        sys.exit(f"write {host_order} first: python3 tools/code_order.py {HOST}")
    subprocess.run(["bash", os.path.join(ROOT, "cross/build.sh"), a.target], check=True)
    binary = os.path.join(os.environ.get("CROSS_TARGET_DIR", os.path.join(ROOT, "target/cross")), a.target, "release/embslim")
    syms = text_symbols(binary, a.target)
    docs = bench_memory.first_docs(a.docs)

    inference, load = set(), set()
    x86 = set() if a.target == HOST else inference_keys(host_order)
    for packed in (True, False):
        if a.target == HOST:
            ld, inf = callgrind_phases(binary, syms, a.bundle, docs, packed)
        else:
            order, before = qemu_run_order(binary, syms, a.target, a.bundle, docs, packed)
            inf = set(order[before:]) | {n for n in order[:before] if HASHES.sub("", n) in x86}
            ld = set(order) - inf
        inference |= inf
        load |= ld
    inference = sorted(n for n in inference if n in syms)
    load = sorted(n for n in load - set(inference) if n in syms)
    kb = lambda names: sum(syms[n][1] for n in names) / 1e3  # noqa: E731

    out = os.path.join(ROOT, "cross/order", f"{a.target}.txt")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".tmp", "w") as f:
        f.write(f"# {a.target}: functions in link order, written by tools/code_order.py ({a.docs} BBC documents,\n"
                f"# {os.path.basename(a.bundle)}, classify --packed and expanded). lld reads one symbol a line; '#' lines are comments.\n")
        f.write("# inference\n")
        f.writelines(n + "\n" for n in inference)
        f.write("# load\n")
        f.writelines(n + "\n" for n in load)
    os.replace(out + ".tmp", out)
    print(f"{out}: {len(inference)} inference functions ({kb(inference):.0f} KB), {len(load)} load-only ({kb(load):.0f} KB), "
          f"of {len(syms)} ({kb(syms):.0f} KB)")


if __name__ == "__main__":
    main()
