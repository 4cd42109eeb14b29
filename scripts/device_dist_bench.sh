#!/usr/bin/env bash
# On a GPU machine (no network): gather the parts scripts/device_pack.sh made,
# one per call (carry .device/pK on call K; a machine stays warm ~30 s, so the
# calls go back to back), and on the last one unpack them and time the dist
# stage on CUDA against bare ONNX Runtime forward passes on the same GPU:
# `seedconv bench dist --cuda` at Pythia's vocabulary (50,277), the 14m and
# 70m shapes, the statistics graph (I/O binding, logits kept on the device)
# beside the host pass. Tables go to $OUT (or stdout).
#
# Usage, on call K of N: bash scripts/device_dist_bench.sh K N
#   with carry [".device/pK", ".device/SHA256SUMS"]
set -euo pipefail
k=$1 n=$2
keep=/root/seedconv-device
mkdir -p "$keep"
cp ".device/p$k/part" "$keep/part$k"
[ -f .device/SHA256SUMS ] && cp .device/SHA256SUMS "$keep/"
have=$(ls "$keep"/part* | wc -l)
echo "part $k of $n here ($have gathered)"
[ "$have" -lt "$n" ] && exit 0
cd "$keep"
for i in $(seq 1 "$n"); do
  want=$(grep " p$i/part\$" SHA256SUMS | cut -d' ' -f1)
  got=$(sha256sum "part$i" | cut -d' ' -f1)
  [ "$want" = "$got" ] || { echo "error: part $i corrupted (sha256 $got, expected $want)" >&2; exit 1; }
done
[ -x seedconv ] || { cat $(for i in $(seq 1 "$n"); do echo "part$i"; done) | xz -d | tar -xf -; }
# CUDA 13, cuBLAS and cuDNN from the image's PyTorch packages.
libs=$(python3 - <<'EOF'
import glob, os, site
dirs = set()
for pat in ["libcublasLt.so.13*", "libcudnn.so.9*", "libcudart.so.13*", "libcufft.so*", "libcurand.so*"]:
    for root in site.getsitepackages() + ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"]:
        for f in glob.glob(os.path.join(root, "**", pat), recursive=True):
            dirs.add(os.path.dirname(f))
print(":".join(sorted(dirs)))
EOF
)
export LD_LIBRARY_PATH="$keep/ort:$libs:${LD_LIBRARY_PATH:-}"
export ORT_DYLIB_PATH="$keep/ort/libonnxruntime.so"
out=${OUT:-/tmp/seedconv-bench}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt" || true
run() {
  echo "== bench dist --cuda $*" | tee -a "$out/bench.md"
  timeout 150 ./seedconv -q bench dist --cuda "$@" 2>&1 | tee -a "$out/bench.md"
}
# Pythia-14m and -70m shapes, window 2048 as in the paper (rows: 4 windows).
run --vocab 50277 --d-model 128 --layers 6 --window 2048 --rows 8192 --batch 4 --rounds 3
run --vocab 50277 --d-model 512 --layers 6 --window 2048 --rows 8192 --batch 4 --rounds 3
# The default pipeline's tiny size, for the overhead-bound end.
run --rounds 5
