#!/usr/bin/env python3
"""Zero every GPU machine-code entry of a shared library's fat binaries
except one architecture's, so that the library compresses to a fraction.

ONNX Runtime's CUDA provider (284 MB) carries the same kernels compiled for
sm_75, 80, 86, 89, 90 and 120; a GPU loads only its own. A cubin for another
major architecture cannot run on it anyway, so zeroing those payloads (sizes
and headers kept: the file's layout is unchanged) loses nothing for that GPU
and takes the xz'd library from 187 MB to about 52 MB. Entries with PTX
(which a driver could compile for any GPU) are kept, and a fat binary with
neither PTX nor that architecture's code (it cannot run there as shipped)
is left as it is.

Usage: python3 scripts/fatbin_keep_arch.py IN OUT [--arch 90]
"""
import argparse
import struct
import subprocess
import sys

MAGIC = 0xBA55ED50
KIND_PTX, KIND_CUBIN = 1, 2


def fatbin_section(path):
    out = subprocess.check_output(["readelf", "-S", "-W", path], text=True)
    for line in out.splitlines():
        if ".nv_fatbin" in line:
            f = line.split("]", 1)[1].split()
            return int(f[3], 16), int(f[4], 16)
    raise SystemExit(f"error: {path} has no .nv_fatbin section")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--arch", type=int, default=90, help="SM version kept (90: H100/H200)")
    a = ap.parse_args()
    data = bytearray(open(a.src, "rb").read())
    off, size = fatbin_section(a.src)
    p, end = off, off + size
    containers = zeroed = kept = untouched = 0
    while p + 16 <= end:
        magic, _, hsz, fat = struct.unpack_from("<IHHQ", data, p)
        if magic != MAGIC:
            p += 8  # containers are 8-byte aligned
            continue
        containers += 1
        q, cend = p + hsz, p + hsz + fat
        entries = []
        while q < cend:
            kind, _, ehsz, psize, _, _, _, _, arch = struct.unpack_from("<HHIQIIHHI", data, q)
            entries.append((kind, arch, q + ehsz, psize))
            q += ehsz + psize
        if not any(k == KIND_PTX or arch == a.arch for k, arch, _, _ in entries):
            # Nothing here runs on that GPU as shipped: left as it is.
            untouched += 1
            p = cend
            continue
        for kind, arch, at, psize in entries:
            if kind == KIND_CUBIN and arch != a.arch:
                data[at:at + psize] = bytes(psize)
                zeroed += psize
            else:
                kept += psize
        p = cend
    with open(a.dst, "wb") as f:
        f.write(data)
    print(
        f"{containers} fat binaries: kept {kept / 1e6:.1f} MB (sm_{a.arch}), zeroed {zeroed / 1e6:.1f} MB;"
        f" {untouched} without an sm_{a.arch} or PTX entry left as shipped"
    )


if __name__ == "__main__":
    sys.exit(main())
