"""The engine's and the kernels' interfaces: every implementation satisfies its Protocol, a
card says so (or falls back) for a deflate variant it cannot do, and `-p` bounds every thread."""

from __future__ import annotations

import resource
import subprocess
import time
import zlib

import numpy as np
import pytest

from conftest import blurry_pngs, tool
from octoray import threads
from octoray.engine.executors import LocalExecutor
from octoray.engine.interfaces import Executor
from octoray.kernels.cpu import CpuAccelerator
from octoray.kernels.fpga import FpgaAccelerator, FpgaUnavailable
from octoray.kernels.fpga_emulator import EmulatedPynq
from octoray.kernels.interfaces import Accelerator


def test_the_embedded_executor_satisfies_the_protocol():
    with LocalExecutor(2) as executor:
        assert isinstance(executor, Executor)
        assert executor.in_process and executor.jobs_per_task == 1 and executor.workers == 2


def test_the_dask_executor_satisfies_the_protocol():
    from octoray.engine.cluster import open_executor

    with open_executor(threads=1, cluster="local") as executor:
        assert isinstance(executor, Executor)
        assert not executor.in_process and executor.jobs_per_task >= 1


def test_every_accelerator_satisfies_the_protocol():
    cpu = CpuAccelerator()
    card = FpgaAccelerator(0, pynq_module=EmulatedPynq(devices=1), kind="fpga-emulator", fallback=CpuAccelerator())
    try:
        assert isinstance(cpu, Accelerator) and isinstance(card, Accelerator)
        assert CpuAccelerator(fallback_reason="no card").name == "cpu (no FPGA: no card)"
    finally:
        card.close()


@pytest.mark.parametrize("level, strategy", [(11, None), (6, "huffman"), (6, "rle")])
def test_a_card_runs_the_variants_it_cannot_do_on_its_fallback_or_says_so(level, strategy):
    data = b"variant " * 5000
    emulator = EmulatedPynq(devices=1)
    with_fallback = FpgaAccelerator(0, pynq_module=emulator, kind="fpga-emulator", fallback=CpuAccelerator())
    alone = FpgaAccelerator(0, pynq_module=emulator, kind="fpga-emulator")
    try:
        out = with_fallback.deflate(data, level, True, strategy)
        assert out == CpuAccelerator().deflate(data, level, True, strategy)
        assert zlib.decompress(out, -15) == data
        with pytest.raises(FpgaUnavailable, match=f"cannot do {'level 11' if level == 11 else 'the ' + strategy}"):
            alone.deflate(data, level, True, strategy)
        assert zlib.decompress(alone.deflate(data, 6, True), -15) == data  # its own kind it does
    finally:
        with_fallback.close()
        alone.close()


def test_a_variant_the_chosen_card_cannot_do_is_one_line_naming_the_card():
    import os

    done = subprocess.run([*tool("fgzip"), "-H"], input=b"text " * 1000, capture_output=True,
                          env=dict(os.environ, OCTORAY_ACCELERATOR="fpga-emulator"))
    assert (done.returncode, done.stdout) == (1, b"")
    assert done.stderr == b"fgzip: fpga-emulator:0 gzip_u50+cnv_w1a1_u50: the kernel cannot do the huffman strategy\n"


def test_a_card_hands_a_batch_that_needs_popcounts_to_its_fallback_or_says_so():
    """The card returns only its top-1 class; summing views needs the fc3 popcounts."""
    images = np.random.default_rng(4).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    emulator = EmulatedPynq(devices=1)
    with_fallback = FpgaAccelerator(0, pynq_module=emulator, kind="fpga-emulator", fallback=CpuAccelerator())
    alone = FpgaAccelerator(0, pynq_module=emulator, kind="fpga-emulator")
    try:
        popcounts = CpuAccelerator().cnv_scores(images)
        assert np.array_equal(with_fallback.cnv_scores(images, popcounts=True), popcounts)
        with pytest.raises(FpgaUnavailable, match="returns only its top-1 class"):
            alone.cnv_scores(images, popcounts=True)
        one_hot = alone.cnv_scores(images)  # its own kind it does
        assert (one_hot.sum(axis=1) == 1).all() and np.array_equal(one_hot.argmax(1), popcounts.argmax(1))
    finally:
        with_fallback.close()
        alone.close()


def test_a_budget_of_one_thread_keeps_the_cnv_kernel_on_the_callers_thread(monkeypatch):
    from octoray.kernels import cnv_cpu

    monkeypatch.setattr(cnv_cpu, "_executor", None)
    monkeypatch.setattr(threads, "_budget", None)
    with LocalExecutor(1):
        assert threads.budget() == 1
        CpuAccelerator().cnv_scores(np.zeros((200, 32, 32, 3), dtype=np.uint8))
    assert cnv_cpu._executor is None  # no helper pool was ever started


def test_fclassify_with_one_process_uses_one_core(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    blurry_pngs(folder, 400, seed=3)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    result = subprocess.run([*tool("fclassify"), "-p", "1", str(folder)], capture_output=True, timeout=120)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 400
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu <= wall * 1.05 + 0.05, (cpu, wall)
