"""The C CPU kernel (both its AVX2 and its portable path) gives exactly the numpy reference's
popcounts, on any model and input; concurrent calls share the CPUs."""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from octoray.formats.cnv_model import LAYERS, CnvModel, fan_in
from octoray.kernels import _cnv_native, cnv_cpu, cnv_reference
from test_model import random_model

HAS_AVX2 = _cnv_native.code_path() == "avx2"
PATHS = ["avx2", "portable"] if HAS_AVX2 else ["portable"]


@contextmanager
def _path(path: str):
    before = os.environ.get("OCTORAY_CNV_PORTABLE")
    os.environ["OCTORAY_CNV_PORTABLE"] = "1" if path == "portable" else "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["OCTORAY_CNV_PORTABLE"]
        else:
            os.environ["OCTORAY_CNV_PORTABLE"] = before


def _assert_equal_on_every_path(model: CnvModel, images: np.ndarray) -> None:
    expected = cnv_reference.fc3_popcounts(model, images)
    packed = cnv_cpu.PackedModel(model)
    for path in PATHS:
        with _path(path):
            assert cnv_cpu.code_path() == path
            got = cnv_cpu.fc3_popcounts(packed, images)
        assert got.dtype == np.int64 and got.shape == (len(images), 10)
        assert (got == expected).all(), path


def _images(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _extreme_model(seed: int) -> CnvModel:
    """Thresholds anywhere, past both ends included: channels that always or never fire,
    conv1 thresholds beyond what its accumulator can reach."""
    model = random_model(seed)
    rng = np.random.default_rng(seed + 1)
    model.thresholds["conv1"] = rng.integers(-4000, 4000, 64).astype(np.int32)
    model.thresholds["conv1"][:6] = [-27 * 128, 27 * 128, 27 * 128 + 1, -27 * 128 - 1, -27 * 128 + 1, 27 * 128 - 1]
    for name in LAYERS[1:-1]:
        k = fan_in(name)
        t = rng.integers(-3, k + 4, len(model.thresholds[name])).astype(np.int32)
        t[:6] = [0, k, k + 1, k // 2, 1, k - 1]
        model.thresholds[name] = t
    return model


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31), n=st.integers(1, 9))
def test_kernel_equals_reference_on_random_models(seed, n):
    _assert_equal_on_every_path(random_model(seed), _images(seed, n))


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**31), pixels=st.sampled_from(["random", "black", "white", "stripes", "binary"]))
def test_kernel_equals_reference_on_extreme_thresholds_and_pixels(seed, pixels):
    model = _extreme_model(seed)
    images = _images(seed, 3)
    if pixels == "black":
        images[:] = 0
    elif pixels == "white":
        images[:] = 255
    elif pixels == "stripes":
        images[:, ::2] = 255
        images[:, 1::2] = 0
    elif pixels == "binary":
        images = (images > 127).astype(np.uint8) * 255
    _assert_equal_on_every_path(model, images)


@pytest.mark.parametrize("fire", ["always", "never", "int64 extremes"])
def test_layers_that_always_or_never_fire(fire):
    """Whole layers stuck at 1 or 0 (the next layer sees all-ones or all-zero words), and
    int64 thresholds far outside any reachable count."""
    model = random_model(3)
    for i, name in enumerate(LAYERS[:-1]):
        k = 27 * 128 if name == "conv1" else fan_in(name)
        t = model.thresholds[name].astype(np.int64)
        if fire == "int64 extremes":
            t[::2], t[1::2] = -2**62, 2**62
        elif i % 2 == (fire == "never"):  # every other layer stuck, the others as trained
            t[:] = -k if fire == "always" else k + 1
        model.thresholds[name] = t
    _assert_equal_on_every_path(model, _images(4, 5))


def test_kernel_equals_reference_on_the_shipped_model_and_extreme_pixels():
    model = CnvModel.load()
    images = _images(7, 40)
    images[0] = 0
    images[1] = 255
    images[2, ::2] = 255
    _assert_equal_on_every_path(model, images)
    packed = cnv_cpu.PackedModel(model)
    assert (cnv_cpu.classify(packed, images) == cnv_reference.classify(model, images)).all()


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_batch_sizes_and_threads_give_the_same_rows(threads, monkeypatch):
    """Odd batch sizes, 1, and sizes around the 32-image chunk, on 1 to 3 threads: every row
    is the reference's (computed once, on the largest batch)."""
    model = random_model(11)
    packed = cnv_cpu.PackedModel(model)
    images = _images(12, 97)
    expected = cnv_reference.fc3_popcounts(model, images)
    monkeypatch.setattr(cnv_cpu, "max_threads", threads)
    for n in (1, 2, 5, 31, 32, 33, 65, 97):
        assert (cnv_cpu.fc3_popcounts(packed, images[:n]) == expected[:n]).all(), n
    # a non-contiguous batch (every other image)
    assert (cnv_cpu.fc3_popcounts(packed, images[::2]) == expected[::2]).all()


def test_empty_batch_and_bad_input():
    packed = cnv_cpu.PackedModel(random_model(1))
    assert cnv_cpu.fc3_popcounts(packed, np.zeros((0, 32, 32, 3), np.uint8)).shape == (0, 10)
    with pytest.raises(ValueError):
        cnv_cpu.fc3_popcounts(packed, np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(ValueError):
        cnv_cpu.fc3_popcounts(packed, np.zeros((2, 32, 32), np.uint8))


def test_the_extension_checks_its_buffers():
    packed = cnv_cpu.PackedModel(random_model(1))
    images = np.zeros((2, 32, 32, 3), np.uint8)
    out = np.zeros((2, 10), np.int64)
    _cnv_native.run(packed.blob, images, out, 0, 2)
    with pytest.raises(ValueError):
        _cnv_native.run(packed.blob[:-1], images, out, 0, 2)
    with pytest.raises(ValueError):
        _cnv_native.run(packed.blob, images, out[:1], 0, 2)
    with pytest.raises(ValueError):
        _cnv_native.run(packed.blob, images, out, 1, 3)
    with pytest.raises(TypeError):
        _cnv_native.run(packed.blob, images, out.tobytes(), 0, 2)  # read-only output


def test_portable_is_forced_by_the_environment(monkeypatch):
    monkeypatch.setenv("OCTORAY_CNV_PORTABLE", "1")
    assert cnv_cpu.code_path() == "portable"
    monkeypatch.delenv("OCTORAY_CNV_PORTABLE")
    assert cnv_cpu.code_path() == ("avx2" if HAS_AVX2 else "portable")


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="needs /proc/cpuinfo")
def test_the_avx2_path_is_taken_where_the_cpu_has_avx2():
    with open("/proc/cpuinfo") as f:
        flags = next((line.split() for line in f if line.startswith("flags")), [])
    assert HAS_AVX2 == ("avx2" in flags and "popcnt" in flags)


def _recording_run(monkeypatch):
    """Wraps the extension's run: records the thread of each chunk and the most chunks
    running at once (each chunk made to last a few ms, so that calls overlap)."""
    real = _cnv_native.run
    lock = threading.Lock()
    state = {"running": 0, "most": 0, "threads": []}

    def run(*args):
        with lock:
            state["running"] += 1
            state["most"] = max(state["most"], state["running"])
            state["threads"].append((threading.current_thread().name, cnv_cpu._active))
        try:
            time.sleep(0.004)
            return real(*args)
        finally:
            with lock:
                state["running"] -= 1

    monkeypatch.setattr(_cnv_native, "run", run)
    return state


def test_a_lone_call_uses_every_cpu_it_may(monkeypatch):
    monkeypatch.setattr(cnv_cpu, "max_threads", 2)
    state = _recording_run(monkeypatch)
    model = random_model(2)
    images = _images(3, 32 * 12)
    got = cnv_cpu.fc3_popcounts(cnv_cpu.PackedModel(model), images)
    assert (got == cnv_reference.fc3_popcounts(model, images)).all()
    assert state["most"] == 2
    assert sum(name.startswith("cnv_cpu") for name, _ in state["threads"]) >= 2


def test_concurrent_calls_share_the_cpus(monkeypatch):
    """Two calls at once on 2 CPUs run one thread each (a helper that had started before
    the second call came finishes its chunk and stops), instead of 2 each."""
    monkeypatch.setattr(cnv_cpu, "max_threads", 2)
    state = _recording_run(monkeypatch)
    model = random_model(2)
    packed = cnv_cpu.PackedModel(model)
    images = _images(3, 32 * 12)
    expected = cnv_reference.fc3_popcounts(model, images)
    start = threading.Barrier(2)
    results = {}

    def call(name):
        start.wait()
        results[name] = cnv_cpu.fc3_popcounts(packed, images)

    callers = [threading.Thread(target=call, args=(name,), name=name) for name in ("a", "b")]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert all((results[name] == expected).all() for name in ("a", "b"))
    assert len(state["threads"]) == 24
    overlapping = [name for name, active in state["threads"] if active == 2]
    assert len(overlapping) >= 12  # the calls did overlap
    # at most the chunk that each call's helper had taken before the other call started
    assert sum(name.startswith("cnv_cpu") for name in overlapping) <= 2, state["threads"]
    assert state["most"] <= 3
