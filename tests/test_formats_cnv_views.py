"""fclassify's test-time views (octoray.formats.cnv_views), in process: what each view holds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from octoray.formats.cnv_views import MAX_VIEWS, SHIFTS, summed, views


def numbered(n: int, size: int = 5) -> np.ndarray:
    """n images whose every pixel differs: a view's content says where each pixel went."""
    return (np.arange(n * size * size * 3) % 251 + 1).astype(np.uint8).reshape(n, size, size, 3)


def test_the_views_are_the_image_its_mirror_then_moved_copies_each_with_its_mirror():
    images = numbered(2)
    made = views(images, MAX_VIEWS).reshape(MAX_VIEWS, *images.shape)
    assert (made[0] == images).all() and (made[1] == images[:, :, ::-1]).all()
    down = made[2]  # moved a pixel down: the top row uncovered, the bottom row gone
    assert (down[:, 0] == 0).all() and (down[:, 1:] == images[:, :-1]).all()
    assert (made[3] == down[:, :, ::-1]).all()
    assert (made[4][:, :-1] == images[:, 1:]).all() and (made[4][:, -1] == 0).all()  # up
    assert (made[6][:, :, 1:] == images[:, :, :-1]).all() and (made[6][:, :, 0] == 0).all()  # right
    assert (made[8][:, :, :-1] == images[:, :, 1:]).all() and (made[8][:, :, -1] == 0).all()  # left
    assert len(SHIFTS) * 2 == MAX_VIEWS


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 4), count=st.integers(1, MAX_VIEWS))
def test_fewer_views_are_the_first_of_all_views_and_sum_per_image(n, count):
    images = numbered(n)
    made = views(images, count)
    assert made.shape == (count * n, *images.shape[1:]) and made.dtype == images.dtype
    assert (made == views(images, MAX_VIEWS)[: count * n]).all()
    scores = np.arange(count * n * 10).reshape(count * n, 10)
    assert (summed(scores, count) == sum(scores[v * n:(v + 1) * n] for v in range(count))).all()


@pytest.mark.parametrize("count", [0, MAX_VIEWS + 1])
def test_a_count_out_of_range_is_refused(count):
    with pytest.raises(ValueError, match="views must be 1 to"):
        views(numbered(1), count)
