"""fgzip beside pigz -p2 and gzip, in one run: throughput through a pipe, sizes, start-up, memory.

    python benchmarks/gzip_bench.py                       # the Silesia corpus from ../shared/data
    python benchmarks/gzip_bench.py --corpus FILE ...     # any files
    python benchmarks/gzip_bench.py --memory-gb 3         # also the 3 GB fgzip -1 | fgzip -d stream

Each command reads `cat CORPUS x REPEAT |` and writes to /dev/null; the figure is the median
of --runs runs.  Ratios are taken within this run (shared machines are noisy).
"""

from __future__ import annotations

import argparse
import lzma
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SILESIA = ROOT.parent / "shared" / "data" / "silesia"


def fgzip_argv() -> list[str]:
    """fgzip as installed beside this interpreter (or on PATH), else the checkout's launcher."""
    beside = Path(sys.executable).parent / "fgzip"
    found = str(beside) if beside.exists() else shutil.which("fgzip")
    return [found] if found else [sys.executable, str(ROOT / "bin" / "fgzip")]


def precompile() -> None:
    """Write octoray's bytecode, as `pip install` does for an ordinary install: otherwise, where
    PYTHONDONTWRITEBYTECODE is set (as on some CI machines), every fgzip run in the benchmark
    would compile its modules again, a cost no installed copy pays."""
    import compileall

    compileall.compile_dir(str(ROOT / "octoray"), quiet=1)


def fgzip_command() -> str:
    return " ".join(map(shlex.quote, fgzip_argv()))


def build_corpus(paths: list[Path], workdir: Path) -> Path:
    """One file holding every corpus file (xz files are unpacked), like a tar of them."""
    corpus = workdir / "corpus"
    with open(corpus, "wb") as out:
        for path in paths:
            if path.suffix == ".xz":
                with lzma.open(path) as f:
                    shutil.copyfileobj(f, out, 1 << 20)
            else:
                with open(path, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
    return corpus


def timed(shell: str) -> float:
    start = time.perf_counter()
    subprocess.run(["bash", "-o", "pipefail", "-c", shell], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def median_times(shells: dict[str, str], runs: int) -> dict[str, float]:
    """Median wall time of each command, the commands taking turns in every round so that
    the machine's drift hits them alike."""
    samples: dict[str, list[float]] = {name: [] for name in shells}
    for _ in range(runs):
        for name, shell in shells.items():
            samples[name].append(timed(shell))
    return {name: statistics.median(times) for name, times in samples.items()}


def output_size(shell: str) -> int:
    out = subprocess.run(["bash", "-o", "pipefail", "-c", shell + " | wc -c"], check=True, capture_output=True)
    return int(out.stdout)


def compression_rows(corpus: Path, repeat: int, runs: int, levels: list[int]) -> list[str]:
    fg = fgzip_command()
    source = "cat " + " ".join([shlex.quote(str(corpus))] * repeat)
    total = corpus.stat().st_size * repeat
    rows = []
    for level in levels:
        tools = {"fgzip": f"{fg} -{level}", "pigz -p2": f"pigz -{level} -p 2", "gzip": f"gzip -{level}"}
        times = median_times({name: f"{source} | {cmd} > /dev/null" for name, cmd in tools.items()}, runs)
        speed = {name: total / seconds / 1e6 for name, seconds in times.items()}
        size = {name: output_size(f"cat {shlex.quote(str(corpus))} | {cmd}") for name, cmd in tools.items()}
        for name in tools:
            rows.append(f"| -{level} | {name} | {speed[name]:,.0f} | {speed[name] / speed['pigz -p2']:.2f}x "
                        f"| {size[name]:,} | {size[name] / size['gzip']:.4f} |")
    return rows


def decompression_rows(corpus: Path, repeat: int, runs: int, workdir: Path) -> list[str]:
    packed = workdir / "corpus.gz"
    subprocess.run(f"gzip -6 -c {shlex.quote(str(corpus))} > {shlex.quote(str(packed))}", shell=True, check=True)
    source = "cat " + " ".join([shlex.quote(str(packed))] * repeat)  # concatenated members
    total = corpus.stat().st_size * repeat
    tools = {"fgzip -d": f"{fgzip_command()} -d", "pigz -d": "pigz -d", "gzip -d": "gzip -d"}
    times = median_times({name: f"{source} | {cmd} > /dev/null" for name, cmd in tools.items()}, runs)
    speed = {name: total / seconds / 1e6 for name, seconds in times.items()}
    return [f"| {name} | {speed[name]:,.0f} | {speed[name] / speed['gzip -d']:.2f}x |" for name in tools]


def startup_row(workdir: Path, runs: int) -> str:
    """Wall time of compressing a 1 KB file, each command started directly (no shell)."""
    small = workdir / "small"
    small.write_bytes(os.urandom(512) * 2)
    cmds = {"fgzip -c": [*fgzip_argv(), "-c", str(small)], "pigz -c": ["pigz", "-c", str(small)],
            "gzip -c": ["gzip", "-c", str(small)], "python3 -c pass": [sys.executable, "-c", "pass"]}
    samples: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(max(runs, 21)):
        for name, argv in cmds.items():
            start = time.perf_counter()
            subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
            samples[name].append(time.perf_counter() - start)
    return " / ".join(f"{name} {statistics.median(t) * 1000:.1f} ms" for name, t in samples.items())


def memory_rows(corpus: Path, gigabytes: float, workdir: Path) -> list[str]:
    fg = fgzip_command()
    size = int(gigabytes * 1e9)
    copies = size // corpus.stat().st_size + 1
    # the generator dies of SIGPIPE when head has enough: keep that out of pipefail's view
    source = f"(for i in $(seq {copies}); do cat {shlex.quote(str(corpus))}; done 2>/dev/null || true) | head -c {size}"
    left, right = workdir / "rss-compress", workdir / "rss-decompress"
    shell = (f"{source} | /usr/bin/time -f %M -o {left} {fg} -1 "
             f"| /usr/bin/time -f %M -o {right} {fg} -d | wc -c")
    start = time.perf_counter()
    out = subprocess.run(["bash", "-o", "pipefail", "-c", shell], check=True, capture_output=True)
    seconds = time.perf_counter() - start
    assert int(out.stdout) == size, "the stream did not come back whole"
    kib = [int(p.read_text().split()[-1]) for p in (left, right)]
    return [f"| fgzip -1 | {kib[0] / 1024:.0f} MiB |", f"| fgzip -d | {kib[1] / 1024:.0f} MiB |",
            f"({size / 1e9:.1f} GB in {seconds:.1f} s, round trip byte count checked)"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", nargs="*", type=Path, help="files to use (default: the Silesia corpus)")
    p.add_argument("--repeat", type=int, default=2, help="how many times the corpus is streamed per run")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--levels", type=int, nargs="*", default=[1, 6])
    p.add_argument("--memory-gb", type=float, default=0, help="also stream this many GB through fgzip -1 | fgzip -d")
    args = p.parse_args()
    paths = args.corpus or sorted(SILESIA.glob("*.xz"))
    if not paths:
        p.error(f"no corpus: pass --corpus FILE ... (looked in {SILESIA})")
    precompile()
    for needed in ("pigz", "gzip"):
        if not shutil.which(needed):
            p.error(f"{needed} is needed beside fgzip")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        corpus = build_corpus(paths, workdir)
        mb = corpus.stat().st_size * args.repeat / 1e6
        print(f"corpus: {len(paths)} files, {corpus.stat().st_size:,} bytes, streamed x{args.repeat} "
              f"({mb:.0f} MB) per run, median of {args.runs}; {os.cpu_count()} CPUs\n")
        print("| level | tool | MB/s | vs pigz -p2 | bytes out (1 copy) | vs gzip size |")
        print("| --- | --- | --- | --- | --- | --- |")
        for row in compression_rows(corpus, args.repeat, args.runs, args.levels):
            print(row, flush=True)
        print("\n| decompression (gzip -6 data) | MB/s of output | vs gzip -d |")
        print("| --- | --- | --- |")
        for row in decompression_rows(corpus, args.repeat, args.runs, workdir):
            print(row, flush=True)
        print(f"\nstart-up, 1 KB file (median wall): {startup_row(workdir, args.runs)}")
        if args.memory_gb:
            print("\n| peak RSS, stream | |\n| --- | --- |")
            for row in memory_rows(corpus, args.memory_gb, workdir):
                print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
