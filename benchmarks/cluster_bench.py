"""fgzip -6 on a loopback Dask cluster with one worker process, then two, beside the embedded
default, in one run: does adding a worker (one core each here) nearly double the speed?

    python benchmarks/cluster_bench.py                  # the Silesia corpus, streamed twice
    python benchmarks/cluster_bench.py --corpus FILE --runs 5

It starts `python -m dask scheduler` and `dask worker --nthreads 1 --preload octoray.worker`
processes on 127.0.0.1 and stops them at the end.  Input is `cat`ed through a pipe, output to
/dev/null; median of --runs runs, the three set-ups taking turns in each round.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gzip_bench import SILESIA, build_corpus, fgzip_command, timed  # noqa: E402
from loopback import ROOT, LoopbackCluster  # noqa: E402


def cpu_row(cluster: LoopbackCluster, shell: str, source: str, fg: str) -> str:
    """One run's CPU seconds in each process beside the embedded kernel's work alone: what
    the compression itself costs (fgzip -p 1 in this process tree) and what Dask adds."""
    import resource

    def children_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    before, start = cluster.cpu_seconds(), children_cpu()
    timed(shell)
    client = children_cpu() - start
    spent = {name: seconds - before[name] for name, seconds in cluster.cpu_seconds().items()}
    start = children_cpu()
    timed(f"{source} | {fg} -p 1 > /dev/null")
    alone = children_cpu() - start
    parts = ", ".join(f"{name} {seconds:.2f}" for name, seconds in spent.items())
    return (f"client (fgzip, cat) {client:.2f}, {parts}; total {client + sum(spent.values()):.2f}, "
            f"against {alone:.2f} for the same work in one embedded thread (fgzip -p 1, cat)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", nargs="*", type=Path, help="files to use (default: the Silesia corpus)")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--level", type=int, default=6)
    p.add_argument("--block-kib", type=int, default=0, help="fgzip -b (chunk size in KiB); default fgzip's own")
    args = p.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    one = two = None
    try:
        corpus = build_corpus(args.corpus or sorted(SILESIA.glob("*.xz")), workdir)
        size = corpus.stat().st_size * args.repeat
        source = "cat " + " ".join([shlex.quote(str(corpus))] * args.repeat)
        fg = f"{fgzip_command()} -{args.level}" + (f" -b {args.block_kib}" if args.block_kib else "")
        env = dict(os.environ, PYTHONPATH=str(ROOT), OCTORAY_ACCELERATOR="cpu")
        one, two = LoopbackCluster(workdir / "one", env), LoopbackCluster(workdir / "two", env)
        one.add_worker("w0")
        two.add_worker("w0")
        two.add_worker("w1")
        one.wait_for(lambda table: "w0" in table)
        two.wait_for(lambda table: "w0" in table and "w1" in table)
        shells = {
            "embedded default (2 threads)": f"{source} | {fg} > /dev/null",
            "Dask, 1 worker process": f"{source} | {fg} --scheduler {one.address} > /dev/null",
            "Dask, 2 worker processes": f"{source} | {fg} --scheduler {two.address} > /dev/null",
        }
        samples: dict[str, list[float]] = {name: [] for name in shells}
        for _ in range(args.runs):
            for name, shell in shells.items():
                samples[name].append(timed(shell))
        medians = {name: statistics.median(t) for name, t in samples.items()}
        base = medians["Dask, 1 worker process"]
        print(f"fgzip -{args.level}, {size / 1e6:,.0f} MB through a pipe, median of {args.runs}; "
              f"{os.cpu_count()} CPUs, workers with 1 thread each on 127.0.0.1\n")
        print("| set-up | MB/s | vs 1 worker |")
        print("| --- | --- | --- |")
        for name, seconds in medians.items():
            print(f"| {name} | {size / seconds / 1e6:,.0f} | {base / seconds:.2f}x |")
        print("\ntasks done per worker (2-worker cluster):")
        print(two.status())
        print("CPU seconds of one more run on the 2-worker cluster (where the time goes):")
        print(cpu_row(two, shells["Dask, 2 worker processes"], source, fg))
    finally:
        for cluster in (one, two):
            if cluster is not None:
                cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
