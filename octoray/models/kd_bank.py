"""The teacher's outputs computed once, for a fixed bank of augmentations of every image.

Distillation with the teacher run on every batch spends the teacher's forward pass in each
step (docs/design.md has the share).  A bank draws K crops/flips per training image up
front, runs the teacher on each once, and keeps its logits; training then picks one of an
image's K variants at random each time it meets the image, and its target is exact (the
teacher's output on that very crop).  What it gives up is augmentation variety: K variants
an image instead of 162.  The bank is a pure function of the seed, the images and the
teacher, and is kept beside the run's checkpoints so that a resumed run does not rebuild it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from octoray.models.runs import crop, draw_crops, save_atomically


class Bank:
    """K augmentations per image (dx, dy, flip: each n x K) and the teacher's logits on them
    (n x K x classes, fp16)."""

    def __init__(self, dx: torch.Tensor, dy: torch.Tensor, flip: torch.Tensor, logits: torch.Tensor):
        self.dx, self.dy, self.flip, self.logits = dx, dy, flip, logits

    @property
    def variants(self) -> int:
        return self.dx.shape[1]

    def sample(self, images: torch.Tensor, index: torch.Tensor,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One random variant of each image `index` picks: (the augmented images, the
        teacher's logits on them as float32).  `images` is the whole training set."""
        which = torch.randint(0, self.variants, (len(index),), generator=generator, device=index.device)
        x = crop(images[index], self.dx[index, which], self.dy[index, which], self.flip[index, which])
        return x, self.logits[index, which].float()

    def state(self) -> dict:
        return {"dx": self.dx, "dy": self.dy, "flip": self.flip, "logits": self.logits}


@torch.no_grad()
def build(teacher, images: torch.Tensor, variants: int, seed: int, batch: int = 500) -> Bank:
    """Draw `variants` augmentations of each image (from `seed`, on the images' device) and
    run the teacher on every one."""
    n, device = images.shape[0], images.device
    generator = torch.Generator(device=device).manual_seed(seed)
    dx, dy, flip = draw_crops(n * variants, generator, device)
    dx, dy, flip = dx.view(n, variants), dy.view(n, variants), flip.view(n, variants)
    logits = torch.empty(n, variants, 10, dtype=torch.float16, device=device)
    for v in range(variants):
        for i in range(0, n, batch):
            x = crop(images[i:i + batch], dx[i:i + batch, v], dy[i:i + batch, v], flip[i:i + batch, v])
            logits[i:i + batch, v] = teacher(x.contiguous(memory_format=torch.channels_last)).half()
    return Bank(dx, dy, flip, logits)


def load_or_build(path: Path, teacher, teacher_name: str, images: torch.Tensor, variants: int,
                  seed: int) -> Bank:
    """The bank kept at `path` when it was built from this teacher for as many images, with
    this variant count and seed; else a new one, kept there."""
    made_for = {"teacher": teacher_name, "images": images.shape[0], "variants": variants, "seed": seed}
    if path.exists():
        saved = torch.load(path, map_location=images.device, weights_only=True)
        if saved["made_for"] == made_for:
            return Bank(saved["dx"], saved["dy"], saved["flip"], saved["logits"])
    bank = build(teacher, images, variants, seed)
    save_atomically({"made_for": made_for, **bank.state()}, path)
    return bank
