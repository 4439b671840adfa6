"""What the student's training (train.py) and the teacher's (teacher.py) share: the split on
the device, the augmentation, the device chosen, and where a run keeps its checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from octoray.models.data import cache_dir, class_balanced_split, load_training_set


def load_split(args, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Training and validation images (NCHW uint8) and labels, on the device: the whole set
    is 150 MB, so a GPU never waits for batches."""
    images, labels, _ = load_training_set(args.data)
    train_idx, val_idx = class_balanced_split(labels, args.val_per_class, args.split_seed)

    def put(idx):
        return (torch.from_numpy(images[idx]).permute(0, 3, 1, 2).contiguous().to(device),
                torch.from_numpy(labels[idx]).to(device))

    return (*put(train_idx), *put(val_idx))


def folds(n: int, count: int, seed: int = 0) -> torch.Tensor:
    """The fold (0 .. count-1) of each of n training images: a fixed random partition into
    nearly equal parts, for teachers that each hold one part out (teacher.py --fold)."""
    order = np.random.default_rng(seed).permutation(n)
    fold = np.empty(n, dtype=np.int64)
    fold[order] = np.arange(n) % count
    return torch.from_numpy(fold)


def augment(images: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random 32x32 crop of the image padded by `pad` (pixel 0), and a random horizontal
    flip, on the images' device (the generator's); pad 0 only flips."""
    return crop(images, *draw_crops(images.shape[0], generator, images.device, pad), pad)


def draw_crops(n: int, generator: torch.Generator, device,
               pad: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n random (dx, dy, flip): a crop's offsets in the padded image, 0 to 2 pad each, and
    whether it is mirrored."""
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=device)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=device)
    flip = torch.rand(n, generator=generator, device=device) < 0.5
    return dx, dy, flip


def crop(images: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, flip: torch.Tensor,
         pad: int = 4) -> torch.Tensor:
    """Each image padded by `pad` (pixel 0), cut to 32x32 at (dx, dy) and mirrored where
    `flip`."""
    n, device = images.shape[0], images.device
    padded = F.pad(images, (pad, pad, pad, pad))
    steps = torch.arange(32, device=device)
    rows = (dy[:, None] + steps[None, :])[:, None, :, None].expand(n, 3, 32, 32 + 2 * pad)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + steps[None, :])[:, None, None, :].expand(n, 3, 32, 32)
    out = out.gather(3, cols)
    out[flip] = out[flip].flip(3)
    return out


def cutout(images: torch.Tensor, side: int, generator: torch.Generator) -> torch.Tensor:
    """Each image with a side x side square set to pixel 0 (black, like a crop's padding) at a
    random centre, clipped at the border (DeVries & Taylor 2017); a regulariser for a network
    that fits its training images better than it generalises."""
    n, device = images.shape[0], images.device
    cy = torch.randint(0, 32, (n,), generator=generator, device=device)
    cx = torch.randint(0, 32, (n,), generator=generator, device=device)
    steps = torch.arange(32, device=device)
    rows = (steps[None, :] >= (cy - side // 2)[:, None]) & (steps[None, :] < (cy - side // 2 + side)[:, None])
    cols = (steps[None, :] >= (cx - side // 2)[:, None]) & (steps[None, :] < (cx - side // 2 + side)[:, None])
    hole = rows[:, :, None] & cols[:, None, :]
    return images.masked_fill(hole[:, None], 0)


def mixup(images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mixed images, partner index, weight): each image blended with a random other one of
    the batch, weight ~ U(0, 1) (mixup with alpha 1), rounded back to pixels. With a live
    teacher, which answers for the blend itself, this is "function matching" (Beyer et al. 2022)."""
    n, device = images.shape[0], images.device
    partner = torch.randperm(n, generator=generator, device=device)
    weight = torch.rand(n, generator=generator, device=device)
    w = weight[:, None, None, None]
    mixed = (w * images.float() + (1 - w) * images[partner].float()).round().to(images.dtype)
    return mixed, partner, weight


def choose_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"train: --device {name}: PyTorch sees no CUDA GPU")
    return device


def run_dir(run: str) -> Path:
    path = cache_dir() / "train" / run
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_atomically(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


@torch.no_grad()
def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
             batch: int = 500) -> tuple[float, torch.Tensor]:
    """Accuracy of the model in evaluation mode (one view an image), and its predictions."""
    model.eval()
    predictions = torch.cat([model(images[i:i + batch]).argmax(1) for i in range(0, len(images), batch)])
    return (predictions == labels).float().mean().item(), predictions
