"""The CNV-W1A1 CPU kernel alone (no start-up, files or decoding): images per second on one
thread and on all, and the rate of nibble lookups it reaches.

    python benchmarks/cnv_kernel_bench.py [--images 4000] [--runs 5]

Why: fclassify's rate on a folder is start-up + reading + decoding + this kernel; this
isolates the kernel, to tell how far it is from what the CPU can do.  The AVX2 path does one
vpshufb (32 output channels x 4 input bits) and one byte add per 128 binary
multiply-accumulates, so lookups per second = images/s x LOOKUPS_PER_IMAGE, to compare with
the machine's own vpshufb + vpaddb rate.  The kernel's speed does not depend on the pixels.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from octoray.formats.cnv_model import CONV_SHAPES, FC_SHAPES, CnvModel, fan_in
from octoray.kernels import cnv_cpu

# output positions of each binary layer (conv1 has 8-bit inputs and uses vpmaddubsw instead)
POSITIONS = {"conv2": 28 * 28, "conv3": 12 * 12, "conv4": 10 * 10, "conv5": 3 * 3, "conv6": 1, "fc1": 1, "fc2": 1}


def lookups_per_image() -> int:
    total = 0
    for name, positions in POSITIONS.items():
        cout = (CONV_SHAPES.get(name) or FC_SHAPES[name])[1]
        total += positions * (fan_in(name) // 4) * (cout // 32)
    return total


def rate(packed, images: np.ndarray, threads: int, runs: int) -> float:
    cnv_cpu.max_threads = threads
    cnv_cpu.fc3_popcounts(packed, images[:64])  # thread pool and caches warm
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        cnv_cpu.fc3_popcounts(packed, images)
        seconds.append(time.perf_counter() - start)
    return len(images) / min(seconds)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=4000)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args(argv)
    packed = cnv_cpu.PackedModel(CnvModel.load())
    images = np.random.default_rng(0).integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8)
    cpus = len(os.sched_getaffinity(0))
    lookups = lookups_per_image()
    print(f"code path {cnv_cpu.code_path()}, {lookups:,} lookups an image, best of {args.runs} runs "
          f"of {args.images:,} images\n")
    print("| threads | images/s | us an image a thread | G lookups/s a thread |")
    print("| --- | --- | --- | --- |")
    results = {}
    for threads in sorted({1, cpus}):
        results[threads] = r = rate(packed, images, threads, args.runs)
        print(f"| {threads} | {r:,.0f} | {1e6 * threads / r:.0f} | {lookups * r / threads / 1e9:.2f} |")
    if cpus > 1:
        print(f"\n{cpus} threads give {results[cpus] / results[1]:.2f}x one thread")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
