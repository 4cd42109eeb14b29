#!/usr/bin/env python3
"""seedconv's `run kl` against the paper's own method on the same suite and
machine (a benchmark, not part of the pipeline), in one command.

The paper's method: every checkpoint's full-vocabulary log-probabilities
from an ONNX Runtime forward pass, stored as float16 .npy arrays, then KL
across ordered seed pairs in numpy. seedconv: `run kl --force dist --force
kl` (its upstream stages prepared once, untimed). Each is run as its own
process, alternating, `--repeats` times; the table gives medians of wall
time, CPU seconds (user + system) and peak resident memory (from wait4),
durable disk, the accuracy of the paper's fp16 means against seedconv's
exact KL, and the ratio of wall times. A third process times the floor:
bare ONNX Runtime forward passes over the same windows (16 windows a call,
nothing kept). `--config scripts/bench_suite_trained.toml` runs it on the
default study's own 120 checkpoints (after `seedconv run train`).

Needs: pip install numpy onnxruntime==1.31.1 pyarrow
Usage: python3 scripts/bench_paper_method.py [--config scripts/bench_suite.toml]
       [--seedconv PATH] [--repeats 3] [--out DIR]
"""
import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq

from machine import cpu_name


def timed(cmd):
    """Run `cmd`; return (wall s, cpu s, peak RSS MB) of that process tree's leader."""
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.time() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=os.path.join(here, "bench_suite.toml"))
    ap.add_argument("--seedconv", default=shutil.which("seedconv") or "seedconv")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="/tmp/paper_method")
    ap.add_argument("--paper-only", metavar="STORE", help=argparse.SUPPRESS)
    ap.add_argument("--bare-only", metavar="STORE", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.paper_only:
        paper(args.paper_only, args.out)
        return
    if args.bare_only:
        bare(args.bare_only)
        return
    sc = [args.seedconv, "-q", "-c", args.config]
    subprocess.run(sc + ["run", "kl"], check=True, stdout=subprocess.DEVNULL)
    store = subprocess.run(sc + ["config", "--json"], check=True, capture_output=True, text=True)
    store = json.loads(store.stdout)["config"]["store"]["dir"]
    ours, theirs, floor = [], [], []
    me = [sys.executable, os.path.abspath(__file__)]
    for _ in range(args.repeats):
        ours.append(timed(sc + ["run", "kl", "--force", "dist", "--force", "kl"]))
        theirs.append(timed(me + ["--paper-only", store, "--out", args.out]))
        floor.append(timed(me + ["--bare-only", store]))
    result = json.load(open(os.path.join(args.out, "result.json")))
    dists, kls = current(store, "dist"), current(store, "kl")
    sc_disk = sum(o["bytes"] for m in dists + kls for o in m["outputs"].values())
    med = lambda xs, i: statistics.median(x[i] for x in xs)
    print("| method | wall (s) | CPU (s) | peak memory | durable disk | mean KL vs exact |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    print(f"| paper: ORT → fp16 .npy → numpy KL | {med(theirs, 0):.1f} | {med(theirs, 1):.1f} | {med(theirs, 2):.0f} MB | {result['disk'] / 1e6:.0f} MB | max error {result['max_err'] * 100:.3f}%, median {result['median_err'] * 100:.3f}% |")
    print(f"| seedconv run kl (dist + kl) | {med(ours, 0):.1f} | {med(ours, 1):.1f} | {med(ours, 2):.0f} MB | {sc_disk / 1e6:.0f} MB | exact (f64 sums) |")
    print(f"| bare ORT forward passes (batches of 16 windows, nothing kept) | {med(floor, 0):.1f} | {med(floor, 1):.1f} | {med(floor, 2):.0f} MB | – | – |")
    print(f"seedconv / paper: wall {med(ours, 0) / med(theirs, 0):.2f}, CPU {med(ours, 1) / med(theirs, 1):.2f}, "
          f"peak memory {med(ours, 2) / med(theirs, 2):.2f}, disk {sc_disk / result['disk']:.2f}; "
          f"seedconv / bare forward: wall {med(ours, 0) / med(floor, 0):.2f} "
          f"({result['checkpoints']} checkpoints, {result['rows']} rows, vocab {result['vocab']}, "
          f"median of {args.repeats} alternating runs; CPU: {cpu_name()}, {os.cpu_count()} cores)")


def current(store, stage):
    index = json.load(open(f"{store}/{stage}/index.json"))
    return [json.load(open(f"{store}/{stage}/{key}/manifest.json")) for key in index.values()]


def windows_of(store):
    """The corpus tokens and its forward windows: (start, row indices)."""
    tokens = pq.read_table(f"{store}/corpus/current/tokens.parquet").column("token_id").to_numpy().astype(np.int64)
    rows_t = pq.read_table(f"{store}/corpus/current/rows.parquet")
    rows = rows_t.column("row").to_numpy()
    cstart = rows_t.column("context_start").to_numpy()
    return tokens, rows, [(int(s), np.nonzero(cstart == s)[0]) for s in np.unique(cstart)]


def bare(store):
    """The floor: every checkpoint's ONNX Runtime forward passes over the
    same windows, 16 windows of one length per call, nothing kept."""
    tokens, rows, windows = windows_of(store)
    so = ort.SessionOptions()
    so.intra_op_num_threads = os.cpu_count()
    by_len = {}
    for s, idx in windows:
        ids = tokens[s:int(rows[idx[-1]]) + 1]
        by_len.setdefault(len(ids), []).append(ids)
    for d in current(store, "dist"):
        sess = ort.InferenceSession(d["extra"]["model"], so, providers=["CPUExecutionProvider"])
        for group in by_len.values():
            for i in range(0, len(group), 16):
                ids = np.stack(group[i:i + 16])
                sess.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})


def paper(store, out_dir):
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)

    tokens, rows, windows = windows_of(store)

    dists = current(store, "dist")
    model = {(d["ingredients"]["params"]["size"], d["ingredients"]["params"]["seed"], d["ingredients"]["params"]["step"]): d["extra"]["model"] for d in dists}
    ckpts = sorted(model)
    sizes = sorted({c[0] for c in ckpts})
    seeds = sorted({c[1] for c in ckpts})
    steps = sorted({c[2] for c in ckpts})
    n = dists[0]["extra"]["vocab_kept"]

    so = ort.SessionOptions()
    so.intra_op_num_threads = os.cpu_count()
    t0 = time.time()
    for size, seed, step in ckpts:
        path = model[(size, seed, step)]
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        out = np.zeros((len(rows), n), dtype=np.float16)
        for s, idx in windows:
            end = int(rows[idx[-1]]) + 1
            ids = tokens[s:end][None, :]
            logits = sess.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0][0, :, :n]
            logits = logits.astype(np.float32)
            lp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
            out[idx] = lp[rows[idx] - s].astype(np.float16)
        np.save(f"{out_dir}/{size}-seed{seed}-step{step}.npy", out)
    t_forward = time.time() - t0

    t0 = time.time()
    means = {}
    for size in sizes:
        for step in steps:
            arr = [np.load(f"{out_dir}/{size}-seed{seed}-step{step}.npy").astype(np.float32) for seed in seeds]
            kls = []
            for a in range(len(seeds)):
                pa = np.exp(arr[a])
                for b in range(len(seeds)):
                    if a != b:
                        kls.append((pa * (arr[a] - arr[b])).sum(-1))
            means[(size, step)] = float(np.mean(kls))
    t_kl = time.time() - t0
    disk = sum(os.path.getsize(f) for f in glob.glob(f"{out_dir}/*.npy"))

    exact = {(k["ingredients"]["params"]["size"], k["ingredients"]["params"]["step"]): k["extra"]["mean_kl"] for k in current(store, "kl")}
    errs = [abs(means[k] - exact[k]) / exact[k] for k in means if k in exact]
    json.dump({"disk": disk, "max_err": max(errs), "median_err": float(np.median(errs)),
               "checkpoints": len(ckpts), "rows": len(rows), "vocab": n,
               "forward_s": t_forward, "kl_s": t_kl}, open(f"{out_dir}/result.json", "w"))


if __name__ == "__main__":
    main()
