"""Shared fixtures: the tools as a user runs them, real gzip/pigz, and test inputs."""

from __future__ import annotations

import os

# The numpy reference's float32 matmuls are small; OpenBLAS's thread pool slows them down by
# orders of magnitude whenever the cores are busy (a pytest run beside anything else).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def tool(name: str) -> list[str]:
    """The console script installed beside this interpreter (or on PATH), else bin/'s launcher."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return [str(beside)]
    found = shutil.which(name)
    return [found] if found else [sys.executable, str(ROOT / "bin" / name)]


def run(argv, *, input: bytes | None = None, cwd=None, env=None, check=False, timeout=120, **kw):
    result = subprocess.run(argv, input=input, capture_output=True, cwd=cwd, env=env, timeout=timeout, **kw)
    if check:
        assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result


def fgzip(*args, **kw):
    return run([*tool("fgzip"), *map(str, args)], **kw)


def assert_no_traceback(result) -> None:
    assert b"Traceback" not in result.stderr, result.stderr.decode(errors="replace")


@pytest.fixture(scope="session")
def gzip_bin() -> str:
    assert shutil.which("gzip"), "GNU gzip is needed for these tests"
    return "gzip"  # by name, so that its messages start with "gzip: "


@pytest.fixture(scope="session")
def pigz_bin() -> str:
    assert shutil.which("pigz"), "pigz is needed for these tests: apt-get install pigz"
    return "pigz"


def text_like(size: int, seed: int = 0) -> bytes:
    """Compressible, text-like data (words from a small vocabulary)."""
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(2000)]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choices(words, k=256)) + b"\n"
    return bytes(out[:size])


def blurry_pngs(folder: Path, count: int, seed: int) -> None:
    """`count` small blurry RGB pictures 000.png, 001.png, ... (JPEG-friendly, unlike noise)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(count):
        small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(small).resize((32, 32), Image.Resampling.BILINEAR).save(folder / f"{i:03d}.png")


SAMPLES = {
    "empty": lambda: b"",
    "tiny": lambda: b"hello, world\n",
    "random": lambda: random.Random(1).randbytes(3_000_000),
    "zeros": lambda: bytes(5_000_000),
    "text": lambda: text_like(4_500_000),
}


@pytest.fixture(params=sorted(SAMPLES))
def sample(request) -> tuple[str, bytes]:
    return request.param, SAMPLES[request.param]()
