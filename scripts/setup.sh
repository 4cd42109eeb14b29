#!/usr/bin/env bash
# One-time setup on a fresh machine (Rust toolchain + Python 3 with pip):
# fetch the ONNX Runtime shared library from PyPI into .ort/ and build the
# release binary. Safe to rerun; both steps are incremental.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 scripts/fetch_ort.py
cargo build --release
