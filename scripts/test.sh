#!/usr/bin/env bash
# The test suite: unit and integration tests against the release profile
# (heavy dependencies are compiled once for both `run` and the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 scripts/fetch_ort.py
cargo test --release "$@"
