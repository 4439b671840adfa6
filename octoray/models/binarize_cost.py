"""What making a real-weight model's weights binary costs, before any training adapts to it.

    python -m octoray.models.binarize_cost --data ../shared/data/cifar10-train.tar.gz \\
        --from training/cnv-w1a1-st1b-last.npz

A staged recipe's first stage trains real weights; its binary stage starts from their signs.
This measures where that step loses accuracy, to choose how the binary stage takes it: each
layer made binary alone, then a growing share of every layer's weights made binary in each
of the two orders `train --binarize-order` offers (blend, largest |w| first). Every row
measures its BatchNorm and TensorNorm statistics anew (``average.recalibrate``, on a fixed
draw of training images), since binary weights change every sum's scale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from octoray.models.average import recalibrate
from octoray.models.portable import model_from_portable, portable_recipe
from octoray.models.runs import evaluate, load_split
from octoray.models.tool import reports_file_errors

SHARES = (0.5, 0.75, 0.875, 0.95)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="octoray-binarize-cost", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, type=Path, help="cifar10-train.tar.gz (the run's split)")
    p.add_argument("--from", dest="source", required=True, type=Path, metavar="FILE",
                   help="a real-weight (stage one) portable file: --save-portable or --keep-portable")
    p.add_argument("--images", type=int, default=10000,
                   help="training images the statistics are measured on (default %(default)s)")
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def calibration_draw(x_train: torch.Tensor, count: int) -> torch.Tensor:
    """The training images every row's statistics are measured on: the same for every row."""
    return x_train[torch.randperm(len(x_train), generator=torch.Generator().manual_seed(0))[:count]]


def accuracy_with(source: Path, calibration: torch.Tensor, x_val, y_val, layers=(), share=None,
                  order="blend") -> float:
    """The validation accuracy of the source model with these layers binary (indices into
    convs + fcs), or every layer's share of weights binary in this order."""
    model = model_from_portable(source)
    binary_layers = (*model.convs, *model.fcs)
    for index in layers:
        binary_layers[index].binarize = True
    if share is not None:
        for layer in binary_layers:
            layer.binarize = True
        model.blend_weights(share, order)
    model.to(memory_format=torch.channels_last)
    recalibrate(model, calibration, crop_pad=portable_recipe(source).get("crop_pad", 4))  # as it trained
    return evaluate(model, x_val, y_val)[0]


@reports_file_errors("binarize_cost")
def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = portable_recipe(args.source)
    if recipe.get("weights", "binary") != "real":
        print(f"binarize_cost: {args.source}: its weights are binary already (not a --weights real run)",
              file=sys.stderr)
        return 1
    split = argparse.Namespace(data=args.data, val_per_class=recipe.get("val_per_class", 500),
                               split_seed=recipe.get("split_seed", 0))
    x_train, _, x_val, y_val = load_split(split, torch.device("cpu"))
    calibration = calibration_draw(x_train, args.images)

    def row(name: str, **how) -> None:
        print(f"{name:<28} {100 * accuracy_with(args.source, calibration, x_val, y_val, **how):6.2f} %", flush=True)

    row("real weights")
    for index in range(9):
        row(f"layer {index + 1} binary", layers=(index,))
    for share in SHARES:
        for order_name in ("blend", "magnitude"):
            row(f"{order_name} {share:g}", share=share, order=order_name)
    row("all binary", share=1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
