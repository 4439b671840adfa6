"""The numba CPU kernel gives exactly the numpy reference's popcounts, on any model and input."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st

from octoray.formats.cnv_model import CnvModel
from octoray.kernels import cnv_cpu, cnv_reference
from test_model import random_model


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31), n=st.integers(1, 9))
def test_kernel_equals_reference_on_random_models(seed, n):
    model = random_model(seed)
    images = np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    packed = cnv_cpu.PackedModel(model)
    assert (cnv_cpu.fc3_popcounts(packed, images) == cnv_reference.fc3_popcounts(model, images)).all()


def test_kernel_equals_reference_on_the_shipped_model_and_extreme_pixels():
    model = CnvModel.load()
    images = np.random.default_rng(7).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    images[0] = 0
    images[1] = 255
    images[2, ::2] = 255
    packed = cnv_cpu.PackedModel(model)
    assert (cnv_cpu.fc3_popcounts(packed, images) == cnv_reference.fc3_popcounts(model, images)).all()
    assert (cnv_cpu.classify(packed, images) == cnv_reference.classify(model, images)).all()
