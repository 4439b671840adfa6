"""Scale-out: fgzip and fclassify over N = 1, 2, 4 and 8 emulated cards, on the embedded
default (N cards in one process) and on a loopback Dask cluster of N worker processes, one
card each (OctoRay's layout), in one run.

    python benchmarks/scaling_bench.py                          # defaults below
    python benchmarks/scaling_bench.py --cards 1 2 4 8 --runs 3 --plot docs/scaling.png

The cards are the PYNQ emulator's (OCTORAY_ACCELERATOR=fpga-emulator) with its throughput
model: each gzip run lasts at least its input / --gzip-mbps, each CNV batch its images /
--cnv-ips, waiting without a CPU, while the result is still computed on the host.  The
rates are chosen so that eight cards' real host work fits in two cores: what is measured is
how well octoray keeps N cards busy, not the host's speed.

Set-ups, for each N (every process a real one, started here and stopped at the end):
- embedded: `fgzip -c FILE` / `fclassify DIR` with OCTORAY_EMULATED_DEVICES=N;
- dask: `dask scheduler` + N x `dask worker --nthreads 1 --preload octoray.worker` with
  OCTORAY_DEVICE=i, the tools given --scheduler; fgzip both from a pipe (`cat FILE |`:
  every byte travels through the client) and given the file (the workers read it).

Each figure is the median of --runs; "speedup" is throughput over the same set-up's N = 1,
"efficiency" speedup / N.  Wall times are whole processes; the start-up (the same command on
1 KB, or on one image) is reported beside them, and the steady rate excludes it.  The client's CPU
seconds (user + system of the fgzip process alone, `cat` not counted) per GB of input are
measured on the pipe and file runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fclassify_bench import DEFAULT_ARCHIVE, extract  # noqa: E402
from gzip_bench import SILESIA, build_corpus  # noqa: E402
from loopback import ROOT, LoopbackCluster, tool_argv  # noqa: E402


def card_env(cards: int, args, **extra) -> dict:
    env = dict(os.environ, OCTORAY_ACCELERATOR="fpga-emulator", OCTORAY_EMULATED_DEVICES=str(cards),
               OCTORAY_EMULATED_GZIP_MBPS=str(args.gzip_mbps), OCTORAY_EMULATED_CNV_IPS=str(args.cnv_ips),
               PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1", **extra)
    env.pop("OCTORAY_DEVICE", None)
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    return env


def card_cluster(where: Path, cards: int, args) -> LoopbackCluster:
    """A scheduler and `cards` workers, worker i driving emulated card i."""
    cluster = LoopbackCluster(where, card_env(cards, args, OCTORAY_LOCK_DIR=str(where / "locks")))
    for i in range(cards):
        cluster.add_worker(f"card{i}", OCTORAY_DEVICE=str(i))
    cluster.wait_for(lambda table: table.count("fpga-emulator:") >= cards)
    return cluster


def run_once(argv: list[str], env: dict, pipe_from: Path | None = None) -> tuple[float, float]:
    """Wall seconds and the tool's own CPU seconds (user + system) of one run; output to
    /dev/null; input piped from `cat pipe_from` when given."""
    start = time.perf_counter()
    cat = None
    with open(os.devnull, "wb") as sink:
        if pipe_from is not None:
            cat = subprocess.Popen(["cat", str(pipe_from)], stdout=subprocess.PIPE)
        proc = subprocess.Popen(argv, stdin=cat.stdout if cat else subprocess.DEVNULL, stdout=sink,
                                stderr=subprocess.PIPE, env=env)
        if cat:
            cat.stdout.close()
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if cat:
            cat.wait()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {err.decode(errors='replace')}")
    return wall, usage.ru_utime + usage.ru_stime


def corpus_file(workdir: Path, megabytes: int) -> Path:
    """The Silesia files as one file, repeated up to `megabytes` MB (the same bytes every run)."""
    one = build_corpus(sorted(SILESIA.glob("*.xz")), workdir)
    target = workdir / "input"
    size = megabytes * 1_000_000
    with open(target, "wb") as out, open(one, "rb") as src:
        written = 0
        while written < size:
            src.seek(0)
            piece = src.read(size - written)
            out.write(piece)
            written += len(piece)
    one.unlink()
    return target


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cards", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--gzip-mbps", type=float, default=5.0, help="one emulated card's gzip rate (MB/s of input)")
    p.add_argument("--cnv-ips", type=float, default=250.0, help="one emulated card's CNV rate (images/s)")
    p.add_argument("--megabytes", type=int, default=256, help="fgzip's input (the Silesia files, repeated)")
    p.add_argument("--images", type=int, default=8000, help="fclassify's input (CIFAR-10 training JPEGs)")
    p.add_argument("--tools", nargs="+", default=["fgzip", "fclassify"], choices=["fgzip", "fclassify"])
    p.add_argument("--modes", nargs="+", default=["embedded", "dask"], choices=["embedded", "dask"])
    p.add_argument("--plot", type=Path, help="draw the speedups into this PNG (matplotlib)")
    p.add_argument("--json", type=Path, help="write every measurement here")
    p.add_argument("--client-cpu-only", action="store_true", help="only the client's CPU per GB (fgzip)")
    args = p.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="scaling-bench-"))
    cluster = None
    try:
        data = corpus_file(workdir, args.megabytes) if "fgzip" in args.tools else None
        tiny = workdir / "tiny"  # the start-up: a run on 1 KB (one task, every card opened)
        tiny.write_bytes(b"octoray " * 128)
        images = extract(DEFAULT_ARCHIVE, args.images, workdir / "images") if "fclassify" in args.tools else None
        one_image = workdir / "one-image"
        if images is not None:
            one_image.mkdir()
            first = next(images.rglob("*.jpg"))
            shutil.copy(first, one_image / first.name)

        def setups(n: int, address: str | None):
            """(set-up, tool, env, extra argv, pipe?) for N cards."""
            for tool in args.tools:
                if "embedded" in args.modes:
                    yield "embedded", tool, card_env(n, args, OCTORAY_LOCK_DIR=str(workdir / "embedded-locks")), [], False
                if address:
                    env, on = card_env(n, args), ["--scheduler", address]
                    if tool == "fgzip":
                        yield "dask, pipe", tool, env, on, True
                        yield "dask, file", tool, env, on, False
                    else:
                        yield "dask", tool, env, on, False

        def command(tool, extra, pipe, small):
            if tool == "fgzip":
                source = tiny if small else data
                if pipe:
                    return [*tool_argv("fgzip"), *extra], source
                return [*tool_argv("fgzip"), "-c", *extra, str(source)], None
            return [*tool_argv("fclassify"), "--batch", "64", *extra, str(one_image if small else images)], None

        results: dict = {}
        for _ in range(0 if args.client_cpu_only else args.runs):  # rounds; in each, every N on a cluster of its own, set-ups taking turns
            for n in args.cards:
                cluster = card_cluster(workdir / f"cluster{n}", n, args) if "dask" in args.modes else None
                try:
                    for name, tool, env, extra, pipe in setups(n, cluster.address if cluster else None):
                        record = results.setdefault((name, tool, n), {"wall": [], "cpu": [], "start_wall": [],
                                                                       "start_cpu": [], "host": []})
                        argv, pipe_from = command(tool, extra, pipe, False)
                        before = sum(cluster.cpu_seconds().values()) if cluster and extra else 0.0
                        wall, cpu = run_once(argv, env, pipe_from)
                        host = cpu + ((sum(cluster.cpu_seconds().values()) - before) if cluster and extra else 0.0)
                        argv, pipe_from = command(tool, extra, pipe, True)
                        start_wall, start_cpu = run_once(argv, env, pipe_from)
                        for key, value in (("wall", wall), ("cpu", cpu), ("start_wall", start_wall),
                                           ("start_cpu", start_cpu), ("host", host / wall)):
                            record[key].append(value)
                        print(f"  {tool} {name} N={n}: {wall:.2f} s, client CPU {cpu:.2f} s, host {host / wall:.2f} "
                              f"cores (start-up {start_wall:.2f} s, {start_cpu:.2f} s)", file=sys.stderr)
                finally:
                    if cluster is not None:
                        cluster.stop()
                        cluster = None

        client = client_cpu(args, workdir, data, tiny) if data is not None and "dask" in args.modes else None

        amount = {"fgzip": data.stat().st_size if data else 0, "fclassify": args.images}
        unit = {"fgzip": "MB/s", "fclassify": "images/s"}
        scale = {"fgzip": 1e6, "fclassify": 1.0}
        table = []
        for (name, tool, n), record in results.items():
            wall = statistics.median(record["wall"])
            start = statistics.median(record["start_wall"])
            cpu = statistics.median(record["cpu"])
            start_cpu = statistics.median(record["start_cpu"])
            table.append({"tool": tool, "setup": name, "cards": n, "wall": wall, "startup": start,
                          "rate": amount[tool] / wall / scale[tool],
                          "steady": amount[tool] / max(wall - start, 1e-9) / scale[tool],
                          "client_cpu": cpu, "client_cpu_startup": start_cpu,
                          "host_cores": statistics.median(record["host"])})
        for row in table:
            base = next(r for r in table if r["tool"] == row["tool"] and r["setup"] == row["setup"]
                        and r["cards"] == min(args.cards))
            row["speedup"] = row["rate"] / base["rate"] * min(args.cards)
            row["steady_speedup"] = row["steady"] / base["steady"] * min(args.cards)
        training = "running" if _training_running() else "not running"
        print(f"\nemulated cards at {args.gzip_mbps:g} MB/s (gzip) and {args.cnv_ips:g} images/s (CNV) each; "
              f"fgzip: {amount['fgzip'] / 1e6:,.0f} MB, fclassify: {args.images:,} JPEGs (--batch 64); "
              f"median of {args.runs}; {os.cpu_count()} CPUs; background training {training}\n")
        print("| tool | set-up | cards | wall s | start-up s | rate | speedup | efficiency | steady rate | "
              "steady speedup | host CPU (cores) |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for row in table:
            u = unit[row["tool"]]
            print(f"| {row['tool']} | {row['setup']} | {row['cards']} | {row['wall']:.2f} | {row['startup']:.2f} | "
                  f"{row['rate']:,.0f} {u} | {row['speedup']:.2f}x | {row['speedup'] / row['cards']:.0%} | "
                  f"{row['steady']:,.0f} {u} | {row['steady_speedup']:.2f}x | {row['host_cores']:.2f} |")
        if client:
            mb = amount["fgzip"] / 1e6
            print(f"\nClient CPU per GB of input: the fgzip process's user + system seconds, on 2 workers with "
                  f"unpaced emulated cards (the cluster faster than the client), median of {args.runs}; per GB = "
                  f"the slope between {mb:,.0f} MB and {4 * mb:,.0f} MB (every fixed cost left out: start-up, "
                  f"the first window of buffers), beside it the {mb:,.0f} MB run less a 1 KB run:\n")
            print(f"| data path | command | 1 KB CPU s | {mb:,.0f} MB CPU s | {4 * mb:,.0f} MB CPU s | "
                  f"CPU s per GB (slope) | ({mb:,.0f} MB - 1 KB) per GB |")
            print("| --- | --- | --- | --- | --- | --- | --- |")
            for name, (command_line, small, one, four) in client.items():
                print(f"| {name} | `{command_line}` | {small:.2f} | {one:.2f} | {four:.2f} | "
                      f"{(four - one) / (3 * mb / 1e3):.2f} | {(one - small) / (mb / 1e3):.2f} |")
        if args.json:
            args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                             "training": training, "rows": table, "client_cpu": client}, indent=1))
        if args.plot:
            plot(table, args, args.plot)
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def client_cpu(args, workdir: Path, data: Path, tiny: Path) -> dict:
    """The fgzip process's CPU seconds on 1 KB, on `data` and on four times `data`, through a
    pipe (`cat FILE |`) and given the file, on a cluster faster than the client."""
    fast = argparse.Namespace(**dict(vars(args), gzip_mbps="", cnv_ips=""))
    four = workdir / "input4"
    with open(four, "wb") as out:
        for _ in range(4):
            with open(data, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
    cluster = card_cluster(workdir / "client-cpu", 2, fast)
    try:
        env, on = card_env(2, fast), ["--scheduler", cluster.address]
        fgzip = [*tool_argv("fgzip"), *on]
        modes = {"pipe (every byte through the client)": "cat FILE \\| fgzip --scheduler ADDR > OUT",
                 "file (the workers read it)": "fgzip -c --scheduler ADDR FILE > OUT"}
        samples: dict = {name: ([], [], []) for name in modes}
        for _ in range(args.runs):
            for name, into in samples.items():
                for source, where in ((tiny, into[0]), (data, into[1]), (four, into[2])):
                    if name.startswith("pipe"):
                        where.append(run_once(fgzip, env, source)[1])
                    else:
                        where.append(run_once([*fgzip, "-c", str(source)], env)[1])
        return {name: (modes[name], *(statistics.median(s) for s in into)) for name, into in samples.items()}
    finally:
        cluster.stop()
        four.unlink()


def _training_running() -> bool:
    """Whether a niced model-training process is using the CPU beside the benchmark."""
    import psutil

    return any(proc.info["nice"] and proc.info["nice"] > 0 and proc.cpu_percent(0.2) > 20
               for proc in psutil.process_iter(["nice"]))


def plot(table: list[dict], args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tools = sorted({row["tool"] for row in table}, key=lambda t: t != "fgzip")
    fig, axes = plt.subplots(1, len(tools), figsize=(5.2 * len(tools), 4.2), squeeze=False)
    for ax, tool in zip(axes[0], tools):
        cards = sorted({row["cards"] for row in table})
        ax.plot(cards, cards, color="0.7", linestyle="--", label="ideal (N x one card)")
        for setup in sorted({row["setup"] for row in table if row["tool"] == tool}):
            rows = sorted((r for r in table if r["tool"] == tool and r["setup"] == setup), key=lambda r: r["cards"])
            ax.plot([r["cards"] for r in rows], [r["speedup"] for r in rows], marker="o", label=setup)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xticks(cards, [str(c) for c in cards])
        ax.set_yticks(cards, [str(c) for c in cards])
        ax.set_xlabel("emulated cards")
        ax.set_ylabel("speedup over one card (whole runs)")
        ax.set_title(f"{tool}: {'gzip %g MB/s' % args.gzip_mbps if tool == 'fgzip' else 'CNV %g images/s' % args.cnv_ips} a card")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
