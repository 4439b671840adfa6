"""The CNV-W1A1 CPU kernel alone (no start-up, files or decoding): images per second on one
thread and on all, and the rate of nibble lookups it reaches.

    python benchmarks/cnv_kernel_bench.py [--images 4000] [--runs 5]

Why: fclassify's rate on a folder is start-up + reading + decoding + this kernel; this
isolates the kernel, to tell how far it is from what the CPU can do.  The AVX2 path does one
vpshufb (32 output channels x 4 input bits) and one byte add per 128 binary
multiply-accumulates, so lookups per second = images/s x lookups an image, to compare with
the machine's own rate of independent vpshufb + vpaddb pairs, which this benchmark measures
too (a small C loop, compiled with the system's cc).  The kernel's speed does not depend on
the pixels.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from octoray.formats.cnv_model import CONV_SHAPES, FC_SHAPES, POOL_AFTER, CnvModel, fan_in
from octoray.kernels import cnv_cpu



def output_positions() -> dict[str, int]:
    """Output positions of each binary layer (conv1, 8-bit, uses vpmaddubsw instead): 3x3
    unpadded convolutions from 32x32, halved after the pooled ones, then the FC layers."""
    side, positions = 32, {}
    for name in CONV_SHAPES:
        side -= 2
        positions[name] = side * side
        if name in POOL_AFTER:
            side //= 2
    del positions["conv1"]
    return {**positions, "fc1": 1, "fc2": 1}


CEILING_C = r"""
/* The CPU's rate of independent vpshufb + vpaddb pairs (8 accumulators), in G pairs a second. */
#include <stdio.h>
#include <time.h>
int main(void) {
    const long rounds = 20000000;  /* 8 pairs a round */
    double best = 1e9;
    for (int run = 0; run < 5; run++) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        long left = rounds;
        __asm__ volatile(
            "vpxor %%ymm8, %%ymm8, %%ymm8\n\t"
            "1:\n\t"
            "vpshufb %%ymm8, %%ymm9, %%ymm0\n\t vpaddb %%ymm0, %%ymm1, %%ymm1\n\t"
            "vpshufb %%ymm8, %%ymm10, %%ymm2\n\t vpaddb %%ymm2, %%ymm3, %%ymm3\n\t"
            "vpshufb %%ymm8, %%ymm11, %%ymm4\n\t vpaddb %%ymm4, %%ymm5, %%ymm5\n\t"
            "vpshufb %%ymm8, %%ymm12, %%ymm6\n\t vpaddb %%ymm6, %%ymm7, %%ymm7\n\t"
            "vpshufb %%ymm9, %%ymm8, %%ymm0\n\t vpaddb %%ymm0, %%ymm13, %%ymm13\n\t"
            "vpshufb %%ymm9, %%ymm10, %%ymm2\n\t vpaddb %%ymm2, %%ymm14, %%ymm14\n\t"
            "vpshufb %%ymm9, %%ymm11, %%ymm4\n\t vpaddb %%ymm4, %%ymm15, %%ymm15\n\t"
            "vpshufb %%ymm9, %%ymm12, %%ymm6\n\t vpaddb %%ymm6, %%ymm8, %%ymm8\n\t"
            "dec %0\n\t jnz 1b\n\t"
            "vzeroupper"
            : "+r"(left) :
            : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
              "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "cc");
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double s = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
        if (s < best) best = s;
    }
    printf("%.3f\n", 8.0 * rounds / best / 1e9);
    return 0;
}
"""


def lookup_ceiling() -> float | None:
    """G vpshufb + vpaddb pairs a second on one core, or None without a C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        source, program = Path(tmp) / "ceiling.c", Path(tmp) / "ceiling"
        source.write_text(CEILING_C)
        subprocess.run([cc, "-O2", "-o", str(program), str(source)], check=True)
        return float(subprocess.run([str(program)], capture_output=True, text=True, check=True).stdout)


def lookups_per_image() -> int:
    total = 0
    for name, positions in output_positions().items():
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
    ceiling = lookup_ceiling() if cnv_cpu.code_path() == "avx2" else None
    if ceiling:
        one = lookups * results[1] / 1e9
        print(f"independent vpshufb + vpaddb pairs on one core: {ceiling:.2f} G/s; the kernel's "
              f"{one:.2f} G/s on one thread is {100 * one / ceiling:.0f} % of that")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
