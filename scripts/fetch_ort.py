#!/usr/bin/env python3
"""Fetch the ONNX Runtime shared library that seedconv loads at run time.

seedconv uses the `ort` crate with `load-dynamic`: the library is not linked at
build time, so nothing is downloaded from hosts other than PyPI. This script
downloads the pinned `onnxruntime` wheel from PyPI with pip and copies
`libonnxruntime.so.<version>` out of it (a wheel is a zip) into `.ort/`.

Usage: python3 scripts/fetch_ort.py [--dest DIR] [--gpu]
"""
import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

ORT_VERSION = "1.31.1"  # must match the `api-31` feature of the ort crate


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--dest", default=os.path.join(here, "..", ".ort"))
    ap.add_argument("--gpu", action="store_true", help="fetch onnxruntime-gpu (CUDA 13) instead")
    args = ap.parse_args()
    dest = os.path.abspath(args.dest)
    lib = os.path.join(dest, f"libonnxruntime.so.{ORT_VERSION}")
    link = os.path.join(dest, "libonnxruntime.so")
    if os.path.exists(lib) and not args.gpu:
        print(f"ONNX Runtime {ORT_VERSION} already at {lib}")
        return 0
    pkg = "onnxruntime-gpu" if args.gpu else "onnxruntime"
    os.makedirs(dest, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11",
               "--implementation", "cp", f"{pkg}=={ORT_VERSION}", "-d", tmp, "-q"]
        subprocess.run(cmd, check=True)
        wheels = glob.glob(os.path.join(tmp, "*.whl"))
        if not wheels:
            print(f"error: pip downloaded no {pkg} wheel", file=sys.stderr)
            return 1
        with zipfile.ZipFile(wheels[0]) as z:
            for name in z.namelist():
                base = os.path.basename(name)
                if base.startswith("libonnxruntime") and ".so" in base:
                    out = os.path.join(dest, base)
                    with z.open(name) as src, open(out + ".part", "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    os.replace(out + ".part", out)
    if not os.path.exists(lib):
        print(f"error: {lib} not found in the {pkg} wheel", file=sys.stderr)
        return 1
    if os.path.lexists(link):
        os.remove(link)
    os.symlink(os.path.basename(lib), link)
    print(f"ONNX Runtime {ORT_VERSION} installed at {lib}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
