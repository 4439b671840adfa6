"""The numba CPU kernel gives exactly the numpy reference's popcounts, on any model and input."""

from __future__ import annotations

import subprocess
import sys

import numba
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from octoray.formats.cnv_model import LAYERS, CnvModel, fan_in
from octoray.kernels import cnv_cpu, cnv_reference
from test_model import random_model


def _images(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _extreme_model(seed: int) -> CnvModel:
    """Thresholds anywhere, past both ends included: channels that always or never fire,
    conv1 thresholds beyond what its accumulator can reach."""
    model = random_model(seed)
    rng = np.random.default_rng(seed + 1)
    model.thresholds["conv1"] = rng.integers(-4000, 4000, 64).astype(np.int32)
    model.thresholds["conv1"][:4] = [-27 * 128, 27 * 128, 27 * 128 + 1, -27 * 128 - 1]
    for name in LAYERS[1:-1]:
        k = fan_in(name)
        t = rng.integers(-3, k + 4, len(model.thresholds[name])).astype(np.int32)
        t[:4] = [0, k, k + 1, k // 2]
        model.thresholds[name] = t
    return model


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31), n=st.integers(1, 9))
def test_kernel_equals_reference_on_random_models(seed, n):
    model = random_model(seed)
    images = _images(seed, n)
    packed = cnv_cpu.PackedModel(model)
    assert (cnv_cpu.fc3_popcounts(packed, images) == cnv_reference.fc3_popcounts(model, images)).all()


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
    packed = cnv_cpu.PackedModel(model)
    assert (cnv_cpu.fc3_popcounts(packed, images) == cnv_reference.fc3_popcounts(model, images)).all()


def test_kernel_equals_reference_on_the_shipped_model_and_extreme_pixels():
    model = CnvModel.load()
    images = _images(7, 40)
    images[0] = 0
    images[1] = 255
    images[2, ::2] = 255
    packed = cnv_cpu.PackedModel(model)
    assert (cnv_cpu.fc3_popcounts(packed, images) == cnv_reference.fc3_popcounts(model, images)).all()
    assert (cnv_cpu.classify(packed, images) == cnv_reference.classify(model, images)).all()


@pytest.mark.parametrize("threads", [1, 2])
def test_batch_sizes_and_threads_give_the_same_rows(threads):
    """Odd batch sizes, 1, and sizes around the 32-image chunk, on 1 and 2 threads: every row
    is the reference's (computed once, on the largest batch)."""
    model = random_model(11)
    packed = cnv_cpu.PackedModel(model)
    images = _images(12, 97)
    expected = cnv_reference.fc3_popcounts(model, images)
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        for n in (1, 2, 5, 31, 32, 33, 65, 97):
            assert (cnv_cpu.fc3_popcounts(packed, images[:n]) == expected[:n]).all(), n
        # a non-contiguous batch (every other image)
        assert (cnv_cpu.fc3_popcounts(packed, images[::2]) == expected[::2]).all()
    finally:
        numba.set_num_threads(before)


def test_empty_batch_and_bad_input():
    packed = cnv_cpu.PackedModel(random_model(1))
    assert cnv_cpu.fc3_popcounts(packed, np.zeros((0, 32, 32, 3), np.uint8)).shape == (0, 10)
    with pytest.raises(ValueError):
        cnv_cpu.fc3_popcounts(packed, np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(ValueError):
        cnv_cpu.fc3_popcounts(packed, np.zeros((2, 32, 32), np.uint8))


def test_portable_path_equals_reference():
    """The path for CPUs without AVX2 (scalar popcount), on the same packed model."""
    model = _extreme_model(5)
    images = _images(6, 4)
    images[0] = 255
    run = cnv_cpu._build(avx2=False)
    result = np.zeros((len(images), 10), dtype=np.int64)
    run(images, *cnv_cpu.PackedModel(model).arguments(), result, 0, len(images))
    assert (result == cnv_reference.fc3_popcounts(model, images)).all()


def test_importing_the_kernel_does_not_import_numba():
    code = "import sys, octoray.kernels.cnv_cpu; assert 'numba' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
