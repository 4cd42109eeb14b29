#!/usr/bin/env python3
"""Wall, user and system CPU time, peak RSS and minor page faults of seedconv
runs (the process and its worker processes), as a Markdown table: the figures
of docs/benchmarks.md's "System time and memory" section, rerunnable.

    python3 scripts/bench_resources.py            # one training, aggregate warm
    python3 scripts/bench_resources.py --cold     # and the default run from an empty store

Each figure runs the release binary (target/release/seedconv, or $SEEDCONV) on
the default pipeline.toml; the cold run uses a fresh store under /tmp and
removes it afterwards. Peak RSS is the largest single process's (the main
process or a training worker), as wait4 reports for each run.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

from machine import cpu_name


def measure(cmd):
    """Runs `cmd` and returns (wall, user, sys, peak MiB, minor faults) of it
    and its waited-for worker processes (wait4: this child's figures alone)."""
    t = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # stderr is small (-q): read after the wait.
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t
    err = p.stderr.read()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"{' '.join(cmd)} failed ({code}): {err.strip()[-400:]}")
    return wall, ru.ru_utime, ru.ru_stime, ru.ru_maxrss / 1024, ru.ru_minflt


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cold", action="store_true", help="also the default run from an empty store")
    ap.add_argument("--config", default="pipeline.toml")
    a = ap.parse_args()
    exe = os.environ.get("SEEDCONV", "target/release/seedconv")
    if not os.path.exists(exe):
        sys.exit(f"{exe}: no release binary (cargo build --release)")
    figures = [
        # The trainer's store must hold the data it reads: run the default
        # pipeline once first (or use --cold).
        ("one training (`run --force 'train:d32-seed1'`)",
         [exe, "run", "-q", "-c", a.config, "--force", "train:d32-seed1"]),
        ("aggregate on the default store (`run --force aggregate aggregate`)",
         [exe, "run", "-q", "-c", a.config, "--force", "aggregate", "aggregate"]),
    ]
    store = None
    if a.cold:
        store = tempfile.mkdtemp(prefix="seedconv-cold-")
        figures.insert(0, ("default run, empty store (`run --set store.dir=…`)",
                           [exe, "run", "-q", "-c", a.config, "--set", f"store.dir={store}"]))
    print("| figure | wall | user | system | system share | peak RSS | minor faults |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    try:
        for name, cmd in figures:
            wall, user, sys_t, peak, faults = measure(cmd)
            share = 100 * sys_t / max(user + sys_t, 1e-9)
            print(f"| {name} | {wall:.1f} s | {user:.1f} s | {sys_t:.2f} s | {share:.1f}% "
                  f"| {peak:.0f} MiB | {faults / 1e6:.2f} M |", flush=True)
    finally:
        if store:
            shutil.rmtree(store, ignore_errors=True)
    print(f"(CPU: {cpu_name()}, {os.cpu_count()} cores; peak RSS: the largest single process of the run)")


if __name__ == "__main__":
    main()
