#!/usr/bin/env bash
# The test suite: unit and integration tests against the release profile
# (heavy dependencies are compiled once for both `run` and the tests).
# The report test renders HTML in headless Chromium: installed here from
# Debian's packages when missing (or point SEEDCONV_CHROMIUM at a browser).
# A one-node Slurm cluster is started for the Slurm executor's tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 scripts/fetch_ort.py
if [ -z "${SEEDCONV_CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1; then
    echo "installing chromium (Debian package) for the report test"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
# The Slurm executor's tests run against a real one-node cluster from
# Debian's packages; where it cannot be brought up they say so and skip.
if scripts/slurm-local.sh start; then
    export SEEDCONV_REQUIRE_SLURM=1
else
    echo "no Slurm cluster: the Slurm executor's tests will be skipped (see above)"
fi
cargo test --release "$@"
