"""Start-up: fgzip on a tiny file stays light and quick."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def test_tiny_file_imports_no_heavy_modules(tmp_path):
    tiny = tmp_path / "tiny"
    tiny.write_bytes(b"x" * 1000)
    probe = (
        "import sys; sys.argv = ['fgzip', '-c', sys.argv[1]];"
        "from octoray.cli.fgzip import main; status = main(); sys.stdout.flush();"
        "heavy = sorted(m for m in ('dask', 'distributed', 'numpy', 'numba', 'torch', 'typer', 'octoray.kernels.fpga') if m in sys.modules);"
        "sys.stderr.write(repr(heavy)); sys.exit(status)"
    )
    result = subprocess.run([sys.executable, "-c", probe, str(tiny)], capture_output=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout[:2] == b"\x1f\x8b"
    assert result.stderr == b"[]"


def test_parallel_decompression_imports_no_threading_or_ctypes(tmp_path):
    """`fgzip -d -p 2` starts its threads raw and tunes malloc in C: threading, queue and
    ctypes are milliseconds of start-up on every run (octoray.threads.start_thread), and so
    are collections and importlib.util (a deque from _collections; pynq looked up through
    sys.meta_path)."""
    data = bytes(range(256)) * 20000  # several chunks at -b 128
    packed = subprocess.run([sys.executable, str(ROOT / "bin" / "fgzip"), "-b", "128", "-c"], input=data,
                            capture_output=True, check=True).stdout
    probe = (
        "import sys; sys.argv = ['fgzip', '-d', '-p', '2'];"
        "from octoray.cli.fgzip import main; status = main(); sys.stdout.flush();"
        "import octoray.jobs.gunzip_parallel as p, octoray.engine.allocator as a;"
        "seen = sorted(m for m in ('threading', 'queue', 'ctypes', 'concurrent.futures', 'collections', 'importlib.util') if m in sys.modules);"
        "sys.stderr.write(repr((seen, a._tuned))); sys.exit(status)"
    )
    result = subprocess.run([sys.executable, "-c", probe], input=packed, capture_output=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == data
    assert result.stderr == b"([], True)"
