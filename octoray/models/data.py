"""The CIFAR-10 training JPEGs, decoded once into a cached uint8 array, and a fixed split."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np

from octoray.formats.cnv_input import CLASS_NAMES


def cache_dir() -> Path:
    base = os.environ.get("OCTORAY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "octoray")
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _decode_tar(archive: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from PIL import Image

    images, labels, names = [], [], []
    class_index = {name: i for i, name in enumerate(CLASS_NAMES)}
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            if not member.isfile() or not member.name.lower().endswith((".jpg", ".jpeg", ".png")):
                continue
            parts = member.name.split("/")
            label = class_index[parts[-2]]
            data = tar.extractfile(member).read()
            with Image.open(io.BytesIO(data)) as im:
                images.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
            labels.append(label)
            names.append("/".join(parts[-2:]))
    order = np.argsort(np.array(names))  # independent of the archive's member order
    return (np.stack(images)[order], np.array(labels, dtype=np.int64)[order],
            [names[i] for i in order])


def _member_label(name: str) -> int | None:
    parts = name.split("/")
    if len(parts) < 2 or not name.lower().endswith((".jpg", ".jpeg", ".png")):
        return None
    return {n: i for i, n in enumerate(CLASS_NAMES)}.get(parts[-2])


def index_archive(archive: Path) -> tuple[list[str], np.ndarray]:
    """Member names ("class/file.jpg", sorted) and labels, without decoding any image."""
    with tarfile.open(archive, "r:*") as tar:
        found = sorted(("/".join(m.name.split("/")[-2:]), _member_label(m.name))
                       for m in tar if m.isfile() and _member_label(m.name) is not None)
    return [n for n, _ in found], np.array([label for _, label in found], dtype=np.int64)


def decode_members(archive: Path, wanted: list[str]) -> np.ndarray:
    """The named images (as index_archive names them), decoded in the order asked."""
    from PIL import Image

    where = {name: i for i, name in enumerate(wanted)}
    out = np.zeros((len(wanted), 32, 32, 3), dtype=np.uint8)
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            i = where.get("/".join(member.name.split("/")[-2:]))
            if i is not None:
                with Image.open(io.BytesIO(tar.extractfile(member).read())) as im:
                    out[i] = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return out


def load_training_set(archive: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images NHWC uint8, labels, member names), decoded once and cached beside the checkpoints."""
    archive = Path(archive)
    stat = archive.stat()
    cached = cache_dir() / f"cifar10-{stat.st_size}-{int(stat.st_mtime)}.npz"
    if cached.exists():
        with np.load(cached, allow_pickle=False) as z:
            return z["images"], z["labels"], list(z["names"])
    images, labels, names = _decode_tar(archive)
    tmp = cached.with_suffix(".tmp.npz")
    np.savez(tmp, images=images, labels=labels, names=np.array(names))
    os.replace(tmp, cached)
    return images, labels, names


def class_balanced_split(labels: np.ndarray, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, validation): `per_class` validation images of each class, fixed by `seed`."""
    rng = np.random.default_rng(seed)
    validation = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        validation.append(rng.choice(members, size=per_class, replace=False))
    validation = np.sort(np.concatenate(validation))
    train = np.setdiff1d(np.arange(len(labels)), validation)
    return train, validation
