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
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gzip_bench import SILESIA, build_corpus, fgzip_command, timed  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


class LoopbackCluster:
    def __init__(self, where: Path):
        self.where, self.file = where, where / "scheduler.json"
        self.env = dict(os.environ, PYTHONPATH=str(ROOT), OCTORAY_ACCELERATOR="cpu")
        self.procs = [self._start("scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address",
                                  "127.0.0.1:0", "--scheduler-file", str(self.file), "--no-show")]
        while not self.file.exists():
            time.sleep(0.1)
        time.sleep(0.3)
        self.address = json.loads(self.file.read_text())["address"]

    def _start(self, *argv: str) -> subprocess.Popen:
        log = open(self.where / f"{argv[0]}-{len(getattr(self, 'procs', []))}.log", "wb")
        return subprocess.Popen([sys.executable, "-m", "dask", *argv], stdout=log, stderr=subprocess.STDOUT,
                                env=self.env)

    def add_worker(self, name: str) -> None:
        self.procs.append(self._start("worker", self.address, "--name", name, "--nthreads", "1",
                                      "--no-dashboard", "--preload", "octoray.worker"))
        deadline = time.time() + 60
        while name not in self.workers():
            if time.time() > deadline:
                raise RuntimeError(f"worker {name} did not join")
            time.sleep(0.3)

    def workers(self) -> str:
        octoray = Path(sys.executable).parent / "octoray"
        argv = [str(octoray)] if octoray.exists() else [sys.executable, str(ROOT / "bin" / "octoray")]
        return subprocess.run([*argv, "status", "--scheduler", self.address], capture_output=True,
                              text=True).stdout

    def cpu_seconds(self) -> dict[str, float]:
        """User + system CPU so far of the scheduler and of each worker (nanny and worker)."""
        import psutil  # distributed depends on it

        def tree(pid: int) -> float:
            proc = psutil.Process(pid)
            total = 0.0
            for each in [proc, *proc.children(recursive=True)]:
                try:
                    times = each.cpu_times()
                    total += times.user + times.system
                except psutil.NoSuchProcess:
                    pass
            return total

        names = ["scheduler"] + [f"worker {i}" for i in range(len(self.procs) - 1)]
        return {name: tree(proc.pid) for name, proc in zip(names, self.procs)}

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


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
        (workdir / "one").mkdir()
        (workdir / "two").mkdir()
        one, two = LoopbackCluster(workdir / "one"), LoopbackCluster(workdir / "two")
        one.add_worker("w0")
        two.add_worker("w0")
        two.add_worker("w1")
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
        print(two.workers())
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
