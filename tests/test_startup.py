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
