"""fclassify beside the trained float model in plain PyTorch, on the same folder of JPEGs, in
one run: whole processes, wall time, images per second, and whether the labels agree.

fclassify runs twice a round: as a user runs it by default (one view an image, one pass of
the network, as PyTorch and Brevitas make; its labels are compared with PyTorch's) and with
`--views 2` (the image and its mirror: two passes, more labels right).

    python benchmarks/fclassify_bench.py                        # 10,000 CIFAR-10 training JPEGs
    python benchmarks/fclassify_bench.py --images DIR --runs 5 --plot docs/fclassify-bench.png

The folder defaults to the first N images of each class of ../shared/data/cifar10-train.tar.gz,
extracted to a temporary folder.  fclassify runs once first (a user's first run after
installing); that cold run is reported too.  Needs the bench extra for the PyTorch and
Brevitas sides: pip install '.[bench]' (without Brevitas its column is left out).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-train.tar.gz"


def extract(archive: Path, count: int, where: Path) -> Path:
    """The first count/10 JPEGs of each class folder."""
    per_class = max(1, count // 10)
    taken: dict[str, int] = {}
    with tarfile.open(archive, "r|gz") as tar:
        for member in tar:
            if not member.isfile():
                continue
            parent = os.path.basename(os.path.dirname(member.name))
            if taken.get(parent, 0) >= per_class:
                continue
            taken[parent] = taken.get(parent, 0) + 1
            target = where / parent / os.path.basename(member.name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
            if sum(taken.values()) >= count:
                break
    return where


BREVITAS = "Brevitas cnv_1w1a (2 threads)"
FIRST = "fclassify, first run after install"
TORCH = "PyTorch (float CNV, 2 threads)"


def brevitas_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("brevitas_examples") is not None


def fclassify_command() -> list[str]:
    beside = Path(sys.executable).parent / "fclassify"
    return [str(beside)] if beside.exists() else [sys.executable, str(ROOT / "bin" / "fclassify")]


def timed(argv: list[str]) -> tuple[float, bytes]:
    start = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, check=True)
    return time.perf_counter() - start, result.stdout


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=Path, help="folder of images (default: extract from the CIFAR-10 archive)")
    p.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    p.add_argument("--count", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--plot", type=Path, help="also draw the figures as a PNG bar chart")
    args = p.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="fclassify-bench-"))
    try:
        folder = args.images or extract(args.archive, args.count, workdir / "images")
        n = sum(len(files) for _, _, files in os.walk(folder))
        ours = [*fclassify_command(), str(folder)]
        others = {TORCH: "torch_classify.py"}
        if brevitas_installed():
            others[BREVITAS] = "brevitas_classify.py"
        commands = {"fclassify": ours, "fclassify --views 2": [*fclassify_command(), "--views", "2", str(folder)],
                    **{name: [sys.executable, str(ROOT / "benchmarks" / script), str(folder)]
                       for name, script in others.items()}}
        cold, first = timed(ours)
        seconds: dict[str, list[float]] = {name: [] for name in commands}
        outputs = {}
        for _ in range(args.runs):  # interleaved, so that all see the same machine
            for name, argv in commands.items():
                t, outputs[name] = timed(argv)
                seconds[name].append(t)
        ours_labels = [line.split(b"\t")[1] for line in outputs["fclassify"].splitlines()]
        their_labels = [line.split(b"\t")[1] for line in outputs[TORCH].splitlines()]
        agree = sum(a == b for a, b in zip(ours_labels, their_labels)) / max(1, len(ours_labels))
        base = statistics.median(seconds[TORCH])
        print(f"{n:,} images in {folder}, whole process, median of {args.runs}; {os.cpu_count()} CPUs\n")
        brevitas = statistics.median(seconds[BREVITAS]) if BREVITAS in seconds else None
        print("| tool | seconds | images/s | vs PyTorch |" + (" vs Brevitas |" if brevitas else ""))
        print("| --- | --- | --- | --- |" + (" --- |" if brevitas else ""))
        rates = {}
        for name, median in [*((k, statistics.median(v)) for k, v in seconds.items()), (FIRST, cold)]:
            if name != FIRST:
                rates[name] = n / median
            print(f"| {name} | {median:.2f} | {n / median:,.0f} | {base / median:.1f}x |"
                  + (f" {brevitas / median:.1f}x |" if brevitas else ""))
        print(f"\nlabels of fclassify agreeing with the float model: {100 * agree:.2f} % of {len(ours_labels):,}"
              f" (first run identical to later runs: {first == outputs['fclassify']})")
        if args.plot:
            plot(rates, n, args.plot)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def plot(rates: dict[str, float], n: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 2.6))
    names = list(rates)
    ax.barh(names, [rates[k] for k in names], color=["#2a7"] + ["#888"] * (len(names) - 1))
    for i, name in enumerate(names):
        ax.text(rates[name], i, f" {rates[name]:,.0f}", va="center")
    ax.set_xlabel(f"images/s, whole process, {n:,} CIFAR-10 JPEGs, 2 cores")
    ax.set_xlim(0, max(rates.values()) * 1.25)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
