"""Parallel gzip decoding beside fgzip -d -p 1, rapidgzip -d -P 2, pigz -d and gzip -d, in one run.

    python benchmarks/gunzip_bench.py                    # Silesia from ../shared/data, x2 (224 MB)
    python benchmarks/gunzip_bench.py --memory-gb 3      # also peak RSS on a 3 GB stream
    python benchmarks/gunzip_bench.py --levels           # -1..-3: fgzip's kernels and others vs gzip
    python benchmarks/gunzip_bench.py --input BGZF       # only bgzip's layout (htslib, samtools)
    python benchmarks/gunzip_bench.py --input appended   # only the stream of small members

Every decoder reads `cat FILE |` (a pipe) and writes to /dev/null; a figure is the median of
--runs runs, the commands taking turns.  Ratios are taken within this run.  The inputs are
fgzip's default output (level 6, independent 1 MiB chunks announced in the header) as it
writes it to a file (with an index of the chunks) and to a pipe (without), gzip -6's output,
BGZF (bgzip's members of 64 KiB, each giving its size), and a stream of small members (as
`gzip -c piece >> FILE` appends them).  rapidgzip (pip install '.[bench]') is measured where it is installed.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gzip_bench import SILESIA, build_corpus, fgzip_command, median_times, precompile  # noqa: E402

CHUNK = 1 << 20  # fgzip's default block size, for the -1..-3 table
BGZF = "BGZF (bgzip's layout: zlib -6, 64 KiB members)"
MEMBERS = "gzip members of 4 KiB each (appended logs)"


# --- measurements ----------------------------------------------------------------------

def decoders(threads: int) -> dict[str, str]:
    fg = fgzip_command()
    tools = {"fgzip -d -p 1": f"{fg} -d -p 1", f"fgzip -d -p {threads}": f"{fg} -d -p {threads}"}
    rapid = shutil.which("rapidgzip", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    if rapid:
        tools[f"rapidgzip -d -P {threads}"] = f"{rapid} -d -c -P {threads}"
    tools.update({"pigz -d": "pigz -d", "gzip -d": "gzip -d"})
    return tools


def inputs(corpus: Path, workdir: Path) -> dict[str, Path]:
    made = {"fgzip -6, indexed (written to a file)": workdir / "indexed.gz",
            "fgzip -6, no index (written to a pipe)": workdir / "piped.gz",
            "gzip -6": workdir / "gzip6.gz"}
    indexed, piped, gzip6 = (shlex.quote(str(path)) for path in made.values())
    source, fg = shlex.quote(str(corpus)), fgzip_command()
    for shell in (f"{fg} -c {source} > {indexed}", f"cat {source} | {fg} | cat > {piped}",
                  f"gzip -6 -c {source} > {gzip6}"):
        subprocess.run(shell, shell=True, check=True)
    from octoray.formats import bgzf  # no bgzip here: its layout, written the way it writes it

    made[BGZF] = workdir / "bgzf.gz"
    made[BGZF].write_bytes(bgzf.compress(corpus.read_bytes()))
    made[MEMBERS] = workdir / "members.gz"
    with open(made[MEMBERS], "wb") as out, open(corpus, "rb") as source:  # as `gzip -c piece >> FILE` makes it
        for piece in iter(lambda: source.read(4096), b""):
            out.write(gzip.compress(piece, 6, mtime=0))
    return made


def decompression_rows(corpus: Path, files: dict[str, Path], runs: int, threads: int,
                       quick: bool = False) -> list[str]:
    rows = []
    expected = corpus.stat().st_size
    tools = decoders(threads)
    if quick:
        files = {label: path for label, path in files.items() if "pipe" in label}
        tools = {name: cmd for name, cmd in tools.items()
                 if name.startswith(("fgzip", "rapidgzip"))}
    for label, path in files.items():
        for name, cmd in tools.items():  # every output checked once, byte count and bytes
            check = subprocess.run(f"cat {shlex.quote(str(path))} | {cmd} | cmp - {shlex.quote(str(corpus))}",
                                   shell=True, capture_output=True)
            assert check.returncode == 0, f"{name} on {label}: {check.stderr.decode()}"
        times = median_times({name: f"cat {shlex.quote(str(path))} | {cmd} > /dev/null"
                              for name, cmd in tools.items()}, runs)
        base = times["fgzip -d -p 1"]
        rapid = next((t for n, t in times.items() if n.startswith("rapidgzip")), None)
        for name, seconds in times.items():
            versus_rapid = f"{rapid / seconds:.2f}x" if rapid else "-"
            rows.append(f"| {label} | {name} | {seconds:.3f} | {expected / seconds / 1e6:,.0f} "
                        f"| {base / seconds:.2f}x | {versus_rapid} |")
    return rows


def seekable_rows(corpus: Path, files: dict[str, Path], runs: int, threads: int) -> list[str]:
    """A foreign file read from disk: rapidgzip can seek in it, the current inflater cannot use that."""
    tools = {"fgzip -d -p 1 FILE": f"{fgzip_command()} -dc -p 1 {{}}"}
    rapid = decoders(threads).get(f"rapidgzip -d -P {threads}")
    if rapid:
        tools[f"rapidgzip -d -P {threads} FILE"] = rapid + " {}"
    path = shlex.quote(str(files["gzip -6"]))
    times = median_times({name: cmd.format(path) + " > /dev/null" for name, cmd in tools.items()}, runs)
    base = times["fgzip -d -p 1 FILE"]
    return [f"| gzip -6, from a file | {name} | {t:.3f} | {corpus.stat().st_size / t / 1e6:,.0f} | {base / t:.2f}x |"
            for name, t in times.items()]


def memory_rows(corpus: Path, gigabytes: float, workdir: Path, threads: int) -> list[str]:
    size = int(gigabytes * 1e9)
    copies = size // corpus.stat().st_size + 1
    source = (f"(for i in $(seq {copies}); do cat {shlex.quote(str(corpus))}; done 2>/dev/null || true) "
              f"| head -c {size}")
    rss, fg = workdir / "rss", fgzip_command()
    shell = f"{source} | {fg} | /usr/bin/time -f %M -o {rss} {fg} -d -p {threads} | wc -c"
    start = time.perf_counter()
    out = subprocess.run(["bash", "-o", "pipefail", "-c", shell], check=True, capture_output=True)
    seconds = time.perf_counter() - start
    assert int(out.stdout) == size, "the stream did not come back whole"
    kib = int(rss.read_text().split()[-1])
    return [f"| fgzip -d -p {threads}, {size / 1e9:.1f} GB stream of fgzip's output through a pipe "
            f"| {kib / 1024:.0f} MiB |",
            f"({seconds:.1f} s for compression and decompression; byte count checked)"]


def level_rows(corpus: Path) -> list[str]:
    """-1..-3: fgzip's kernel as it runs (independent chunks, decodable in parallel) and the
    candidates, each with independent chunks and, where the library takes a dictionary,
    primed with the previous chunk's last 32 KiB (chunks that depend on each other), against
    gzip's size at the same level; MB/s on one thread.  The issue's bound is 1.01x gzip's size."""
    import deflate
    from isal import isal_zlib

    from octoray.kernels.cpu import GZIP_LEVELS
    from octoray.kernels.cpu import deflate_chunk as kernel

    data = corpus.read_bytes()

    def isal(level):
        def run(piece, dictionary, last):
            options = {"zdict": dictionary} if dictionary else {}
            c = isal_zlib.compressobj(level, isal_zlib.DEFLATED, -15, 9, 0, **options)
            return c.compress(piece) + c.flush(isal_zlib.Z_FINISH if last else isal_zlib.Z_SYNC_FLUSH)
        return run

    def libdeflate(level):
        return lambda piece, _dictionary, _last: deflate.deflate_compress(piece, level)

    def measure(run, primed: bool) -> tuple[int, float]:
        total, previous, started = 0, None, time.process_time()
        for i in range(0, len(data), CHUNK):
            piece = data[i:i + CHUNK]
            total += len(run(piece, previous if primed else None, i + CHUNK >= len(data)))
            previous = piece[-32768:]
        return total, len(data) / (time.process_time() - started) / 1e6

    candidates = {"ISA-L 1": (isal(1), True), "ISA-L 2": (isal(2), True), "ISA-L 3": (isal(3), True),
                  "libdeflate 1": (libdeflate(1), False), "libdeflate 2": (libdeflate(2), False)}
    rows = []
    for level in (1, 2, 3):
        gzip_size = len(subprocess.run(["gzip", f"-{level}", "-c", str(corpus)], capture_output=True,
                                       check=True).stdout)
        size, speed = measure(lambda piece, _d, last: kernel(piece, level, last), False)
        library, library_level = GZIP_LEVELS[level]
        rows.append(f"| -{level} | fgzip: {library} {library_level}, independent | {size:,} "
                    f"| {size / gzip_size:.4f} | {speed:,.0f} |")
        for name, (run, primable) in candidates.items():
            for primed in (False, True) if primable else (False,):
                size, speed = measure(run, primed)
                rows.append(f"| -{level} | {name}, {'primed' if primed else 'independent'} | {size:,} "
                            f"| {size / gzip_size:.4f} | {speed:,.0f} |")
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", nargs="*", type=Path, help="files to use (default: the Silesia corpus)")
    p.add_argument("--repeat", type=int, default=2, help="copies of the corpus in the stream")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("-p", "--threads", type=int, default=2)
    p.add_argument("--memory-gb", type=float, default=0, help="also decode a stream this large (peak RSS)")
    p.add_argument("--levels", action="store_true", help="also the -1..-3 size table")
    p.add_argument("--input", metavar="TEXT", help="only the inputs whose label holds TEXT (BGZF, say)")
    p.add_argument("--quick", action="store_true",
                   help="only fgzip's output as written to a pipe, against fgzip -d -p 1 and rapidgzip")
    args = p.parse_args()
    paths = args.corpus or sorted(SILESIA.glob("*.xz"))
    if not paths:
        p.error(f"no corpus: pass --corpus FILE ... (looked in {SILESIA})")
    precompile()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        one = build_corpus(paths, workdir)
        corpus = workdir / "stream"
        with open(corpus, "wb") as out:
            for _ in range(args.repeat):
                out.write(one.read_bytes())
        files = {label: path for label, path in inputs(corpus, workdir).items()
                 if not args.input or args.input in label}
        print(f"corpus: {len(paths)} files x{args.repeat}, {corpus.stat().st_size:,} bytes; median of {args.runs} "
              f"runs; {os.cpu_count()} CPUs; sizes: "
              + ", ".join(f"{label} {path.stat().st_size:,}" for label, path in files.items()) + "\n")
        print("| input (through a pipe) | decoder | seconds | MB/s of output | vs fgzip -d -p 1 | vs rapidgzip |")
        print("| --- | --- | --- | --- | --- | --- |")
        for row in decompression_rows(corpus, files, args.runs, args.threads, args.quick):
            print(row, flush=True)
        if not args.quick and "gzip -6" in files:
            print("\n| input | decoder | seconds | MB/s | vs fgzip -d -p 1 |\n| --- | --- | --- | --- | --- |")
            for row in seekable_rows(corpus, files, args.runs, args.threads):
                print(row, flush=True)
        if args.levels:
            print("\n| level | kernel, chunks | bytes | vs gzip at that level | MB/s (1 thread) |"
                  "\n| --- | --- | --- | --- | --- |")
            for row in level_rows(one):
                print(row, flush=True)
        if args.memory_gb:
            print("\n| peak RSS | |\n| --- | --- |")
            for row in memory_rows(one, args.memory_gb, workdir, args.threads):
                print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
