#!/usr/bin/env python3
"""The paper's own method on seedconv's suite, for comparison (a benchmark,
not part of the pipeline): full-vocabulary log-probabilities of every
checkpoint stored as float16 .npy arrays, then KL across ordered seed pairs
in numpy. Reads the suite and windows from a finished `seedconv run` and
prints time, disk and accuracy against seedconv's exact KL.

Needs: pip install numpy onnxruntime==1.31.1 pyarrow
Usage: rm -rf stages/dist stages/kl && time seedconv run   # note the wall time T
       python3 scripts/bench_paper_method.py --seedconv-seconds T [--store stages] [--out DIR]
"""
import argparse
import glob
import json
import os
import shutil
import time

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default="stages")
    ap.add_argument("--out", default="/tmp/paper_method")
    ap.add_argument("--seedconv-seconds", type=float, required=True,
                    help="wall time of `seedconv run` computing the dist and kl stages")
    args = ap.parse_args()
    store = args.store
    shutil.rmtree(args.out, ignore_errors=True)
    os.makedirs(args.out)

    tokens = pq.read_table(f"{store}/corpus/current/tokens.parquet").column("token_id").to_numpy().astype(np.int64)
    rows_t = pq.read_table(f"{store}/corpus/current/rows.parquet")
    rows = rows_t.column("row").to_numpy()
    cstart = rows_t.column("context_start").to_numpy()
    windows = []  # (start, [row indices])
    for s in np.unique(cstart):
        idx = np.nonzero(cstart == s)[0]
        windows.append((int(s), idx))

    def current(stage):
        index = json.load(open(f"{store}/{stage}/index.json"))
        return [json.load(open(f"{store}/{stage}/{key}/manifest.json")) for key in index.values()]

    dists = current("dist")
    ckpts = sorted({(d["ingredients"]["params"]["size"], d["ingredients"]["params"]["seed"], d["ingredients"]["params"]["step"]) for d in dists})
    sizes = sorted({c[0] for c in ckpts})
    seeds = sorted({c[1] for c in ckpts})
    steps = sorted({c[2] for c in ckpts})
    n = dists[0]["extra"]["vocab_kept"]

    so = ort.SessionOptions()
    so.intra_op_num_threads = os.cpu_count()
    t0 = time.time()
    for size, seed, step in ckpts:
        path = f"{store}/train/current/{size}-seed{seed}/step{step}/model.onnx"
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        out = np.zeros((len(rows), n), dtype=np.float16)
        for s, idx in windows:
            end = int(rows[idx[-1]]) + 1
            ids = tokens[s:end][None, :]
            logits = sess.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0][0, :, :n]
            logits = logits.astype(np.float32)
            lp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
            out[idx] = lp[rows[idx] - s].astype(np.float16)
        np.save(f"{args.out}/{size}-seed{seed}-step{step}.npy", out)
    t_forward = time.time() - t0

    t0 = time.time()
    means = {}
    for size in sizes:
        for step in steps:
            arr = [np.load(f"{args.out}/{size}-seed{seed}-step{step}.npy").astype(np.float32) for seed in seeds]
            kls = []
            for a in range(len(seeds)):
                pa = np.exp(arr[a])
                for b in range(len(seeds)):
                    if a != b:
                        kls.append((pa * (arr[a] - arr[b])).sum(-1))
            means[(size, step)] = float(np.mean(kls))
    t_kl = time.time() - t0
    disk = sum(os.path.getsize(f) for f in glob.glob(f"{args.out}/*.npy"))

    kls = current("kl")
    exact = {(k["ingredients"]["params"]["size"], k["ingredients"]["params"]["step"]): k["extra"]["mean_kl"] for k in kls}
    sc_time = args.seedconv_seconds
    sc_disk = sum(o["bytes"] for m in dists + kls for o in m["outputs"].values())
    errs = [abs(means[k] - exact[k]) / exact[k] for k in means if k in exact]
    print("| method | wall time (s) | durable disk | mean-KL error vs exact |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| paper: fp16 full arrays + numpy KL | {t_forward + t_kl:.1f} (forward+store {t_forward:.1f}, KL {t_kl:.1f}) | {disk / 1e6:.0f} MB | max {max(errs) * 100:.3f}%, median {np.median(errs) * 100:.3f}% |")
    print(f"| seedconv: dist + kl stages | {sc_time:.1f} | {sc_disk / 1e6:.0f} MB | exact (f64 sums) |")
    print(f"(ratios paper/seedconv: time {(t_forward + t_kl) / sc_time:.2f}, disk {disk / sc_disk:.2f}; {len(ckpts)} checkpoints, {len(rows)} rows, vocab {n})")


if __name__ == "__main__":
    main()
