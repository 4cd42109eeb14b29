#!/usr/bin/env bash
# Pack what a GPU machine without network needs to run `seedconv bench dist
# --cuda`: the stripped release binary and ONNX Runtime 1.31.1's GPU build
# (libonnxruntime + the CUDA provider, 284 MB, cut to one GPU architecture's
# kernels: SM=90 by default, the H100/H200), xz-compressed (≈ 78 MB) and split
# into parts under .device/p1, .device/p2, … (git-ignored), each small enough
# to be carried with the working tree on one device call (64 MiB a call:
# ≈ 21 MB parts beside this tree's 44 MB, so four calls).
# scripts/device_dist_bench.sh, run there once per part in back-to-back calls,
# gathers and runs them.
#
# Usage (from the source folder, after `cargo build --release`):
#   scripts/device_pack.sh [path/to/seedconv]   # default: $CARGO_TARGET_DIR or target
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-${CARGO_TARGET_DIR:-target}/release/seedconv}
[ -x "$bin" ] || { echo "error: no seedconv binary at $bin (cargo build --release first)" >&2; exit 2; }
out=.device
rm -rf "$out" && mkdir -p "$out/stage"
python3 scripts/fetch_ort.py --gpu --dest "$out/stage/ort"
cp "$bin" "$out/stage/seedconv" && strip "$out/stage/seedconv"
# The H100/H200's kernels only (sm_90): 187 MB of xz'd CUDA provider → 52.
cuda=$out/stage/ort/libonnxruntime_providers_cuda.so
python3 scripts/fatbin_keep_arch.py "$cuda" "$cuda.sm90" --arch "${SM:-90}" && mv "$cuda.sm90" "$cuda"
rm -f "$out/stage/ort/libonnxruntime_providers_tensorrt.so"
tar -C "$out/stage" -cf - seedconv ort | xz -6 -T0 > "$out/pack.tar.xz"
rm -rf "$out/stage"
# Each part travels with the working tree (tracked and untracked files not
# ignored) under the device's 64 MiB a call, with 2 MiB to spare.
tree=$(git ls-files -co --exclude-standard -z | xargs -0 du -cb | tail -1 | cut -f1)
size=$((64 * 1048576 - tree - 2 * 1048576))
[ "$size" -gt 1048576 ] || { echo "error: the working tree ($tree bytes) leaves no room for a part" >&2; exit 1; }
split -b "$size" -d -a 2 "$out/pack.tar.xz" "$out/part"
rm "$out/pack.tar.xz"
n=0
for f in "$out"/part*; do
  n=$((n + 1))
  mkdir -p "$out/p$n" && mv "$f" "$out/p$n/part"
done
( cd "$out" && sha256sum p*/part > SHA256SUMS )
echo "packed $n parts under $out/: carry .device/pK on call K with"
echo "  bash scripts/device_dist_bench.sh K $n"
