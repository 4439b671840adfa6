"""Test-time views for CNV-W1A1: several views of each image through the same integer model,
their fc3 scores summed, the best class of the sum taken.

A binarized network's label flips with small changes of its input (a pixel's shift moves
every sign after it), so the sum over a few views is right more often than any one view.
Each view is a whole pass of the unchanged kernel: N views cost N times the work.  The
views, in order: the image, its mirror, then the image moved by one pixel down, up, right
and left, each followed by its mirror.  A moved image is padded with pixel 0, as training's
random crops are.  fclassify's `--views N` takes the first N.
"""

from __future__ import annotations

SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))  # (down, right) in pixels
MAX_VIEWS = 2 * len(SHIFTS)
DEFAULT_VIEWS = 1  # one pass, which a card returning only its top-1 class can make too


def _moved(images, down: int, right: int):
    """(N, H, W, C) images moved by (down, right) pixels, the uncovered edge set to 0."""
    import numpy as np

    if down == right == 0:
        return images
    out = np.zeros_like(images)
    height, width = images.shape[1:3]
    out[:, max(down, 0):height + min(down, 0), max(right, 0):width + min(right, 0)] = \
        images[:, max(-down, 0):height + min(-down, 0), max(-right, 0):width + min(-right, 0)]
    return out


def views(images, count: int):
    """(count * N, H, W, C): view v of image i at row v * N + i (the images: a NumPy array
    (N, H, W, C)).  fclassify's command line reads MAX_VIEWS without loading NumPy."""
    import numpy as np

    if not 1 <= count <= MAX_VIEWS:
        raise ValueError(f"views must be 1 to {MAX_VIEWS}, not {count}")
    if count == 1:
        return images
    made = []
    for down, right in SHIFTS[:(count + 1) // 2]:
        moved = _moved(images, down, right)
        made += [moved, moved[:, :, ::-1]]
    return np.concatenate(made[:count])


def summed(scores, count: int):
    """(N, classes): the scores of `views(images, count)` summed over each image's views."""
    if count == 1:
        return scores
    return scores.reshape(count, -1, scores.shape[-1]).sum(axis=0)
