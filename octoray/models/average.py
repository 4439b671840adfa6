"""Average a run's last epochs into one CNV-W1A1 (stochastic weight averaging for +-1 weights).

    python -m octoray.models.average --data ../shared/data/cifar10-train.tar.gz --run RUN --epochs 131-150

A binary network flips thousands of weights every epoch even late in a schedule: latent weights
near zero cross it back and forth, and each epoch's model is one draw of that noise.  The
mean of the latent weights over several epochs keeps, for each weight, the sign it held
most firmly: one model that no single epoch is.  Its BatchNorm statistics are then measured
again on the training images (the averaged running statistics belong to no model), and it
folds into integers as any other epoch does (``export --from-portable``).  The epochs come
from the snapshots ``train --keep-epochs-from E`` leaves in ``<run>/epochs/`` on the machine
that ran them (kept out of the portable file, which stays a few MiB).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from octoray.models.cnv import CNV
from octoray.models.portable import write_portable
from octoray.models.runs import augment, evaluate, load_split, run_dir
from octoray.models.tool import reports_file_errors

RECALIBRATION_SEED = 0  # the augmentation draws the statistics are measured on


def snapshot_path(run: str, epoch: int) -> Path:
    return run_dir(run) / "epochs" / f"epoch-{epoch}.pt"


@torch.no_grad()
def recalibrate(model: CNV, images: torch.Tensor, batch_size: int = 100, seed: int = RECALIBRATION_SEED,
                crop_pad: int = 4) -> None:
    """Replace every BatchNorm's and the TensorNorm's running statistics by the mean of their
    batch statistics over all the images, augmented as in training and in batches of the
    training's size (what the network learned to see), instead of a recent moving average."""
    generator = torch.Generator(device=images.device).manual_seed(seed)
    norms = model.norms()
    saved = [m.momentum for m in norms]
    model.train()
    try:
        for index, start in enumerate(range(0, len(images) - batch_size + 1, batch_size)):
            for m in norms:
                m.momentum = 1.0 / (index + 1)  # a running mean of the batches so far
            x = augment(images[start:start + batch_size], generator, crop_pad)
            model(x.contiguous(memory_format=torch.channels_last))
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
        model.eval()


def snapshots_mean(run: str, first: int, last: int) -> dict:
    """The mean of the kept weights of epochs first..last of the run (counters: the last one's)."""
    total = None
    for epoch in range(first, last + 1):
        path = snapshot_path(run, epoch)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no snapshot of epoch {epoch} (train --keep-epochs-from)")
        weights = torch.load(path, weights_only=False, map_location="cpu")["model"]
        total = weights if total is None else {
            k: total[k] + v if v.is_floating_point() else v for k, v in weights.items()}
    count = last - first + 1
    return {k: v.float() / count if v.is_floating_point() else v for k, v in total.items()}


def recalibrated(mean: dict, x_train: torch.Tensor, batch_size: int = 100, seed: int = RECALIBRATION_SEED,
                 recipe: dict | None = None) -> CNV:
    """A CNV with the mean weights and statistics measured anew on the training images: the
    network the run's recipe trained (a staged recipe's first stage keeps its real weights or
    activations, so its average is measured as what that stage is, not binarised untrained)."""
    model = CNV.trained_as(recipe or {})
    model.load_state_dict(mean)
    model.to(x_train.device, memory_format=torch.channels_last)
    recalibrate(model, x_train, batch_size, seed, (recipe or {}).get("crop_pad", 4))
    return model


def _epoch_range(text: str) -> tuple[int, int]:
    try:
        first, _, last = text.partition("-")
        a, b = int(first), int(last or first)
    except ValueError:
        a = b = 0
    if not 1 <= a <= b:
        raise argparse.ArgumentTypeError(f"{text!r} is not a range of epochs such as 131-150")
    return a, b


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="octoray-average", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, type=Path, help="cifar10-train.tar.gz (the run's split)")
    p.add_argument("--run", required=True, help="the run whose epochs are averaged")
    p.add_argument("--epochs", required=True, type=_epoch_range, metavar="A-B", action="append",
                   help="average the snapshots of these epochs (train --keep-epochs-from; repeat to compare "
                        "windows)")
    p.add_argument("--seed", type=int, default=RECALIBRATION_SEED,
                   help="the augmentation draws the statistics are measured on (default %(default)s): "
                        "another seed shows how much the accuracy owes to them")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--save-portable", type=Path, metavar="FILE",
                   help="write the average (of the last window) as a portable file that "
                        "export --from-portable folds")
    return p.parse_args(argv)


@reports_file_errors("average")
def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    path = run_dir(args.run) / "last.pt"
    checkpoint = torch.load(path, weights_only=False, map_location="cpu") if path.exists() else None
    if checkpoint is None and args.save_portable:
        print(f"average: {path}: no such checkpoint (the run's recipe and history)", file=sys.stderr)
        return 1
    recipe = (checkpoint or {}).get("recipe", {})
    batch_size = recipe.get("batch_size", 100)
    split = argparse.Namespace(data=args.data, val_per_class=recipe.get("val_per_class", 500),
                               split_seed=recipe.get("split_seed", 0))
    x_train, _, x_val, y_val = load_split(split, torch.device("cpu"))
    try:
        for first, last in args.epochs:
            model = recalibrated(snapshots_mean(args.run, first, last), x_train, batch_size, args.seed, recipe)
            accuracy, _ = evaluate(model, x_val, y_val)
            print(f"epochs {first}-{last} of {args.run}: validation {100 * accuracy:.2f} %", flush=True)
    except FileNotFoundError as error:
        print(f"average: {error}", file=sys.stderr)
        return 1
    if args.save_portable:
        history = [h for h in checkpoint["history"] if h["epoch"] <= last]
        state = {"recipe": recipe, "epoch": last, "history": history, "model": model.state_dict(),
                 "averaged": {"run": args.run, "epochs": [first, last], "val_acc": accuracy,
                              "recalibrated": "BatchNorm and TensorNorm statistics: the mean over all training "
                                              f"images, augmented (seed {args.seed}), in batches of "
                                              f"{batch_size}"}}
        write_portable(state, args.save_portable)
        print(f"wrote {args.save_portable} ({args.save_portable.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
