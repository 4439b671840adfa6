"""`python -m octoray.models.train`'s options, and the recipe a run records from them.

The recipe is what a checkpoint must match to be resumed (a run may change only its
schedule, RESCHEDULABLE), and what the portable and shipped files carry as their history.
"""

from __future__ import annotations

import argparse
from pathlib import Path

RECIPE_KEYS = ("epochs", "batch_size", "lr", "warmup_epochs", "seed", "split_seed", "val_per_class",
               "label_smoothing", "ste", "teacher", "kd_weight", "kd_temperature", "kd_bank", "teacher_precision",
               "init_from", "weights", "activations", "norms", "schedule", "cutout", "mixup", "conv_gradients",
               "binarize_over", "binarize_order", "guide", "guide_weight", "optimizer", "bop_gamma",
               "bop_threshold", "loss", "halve_every", "weight_decay", "crop_pad")
# what a checkpoint made before a key existed was trained with
RECIPE_DEFAULTS = {"init_from": None, "label_smoothing": 0.0, "ste": "hardtanh", "teacher": None, "kd_weight": 0.0,
                   "kd_temperature": 1.0, "kd_bank": 0, "teacher_precision": "float", "weights": "binary",
                   "activations": "binary", "norms": "batch", "schedule": "cosine",
                   "cutout": 0, "mixup": False, "conv_gradients": "float",
                   "binarize_over": 0, "binarize_order": "blend", "guide": None, "guide_weight": 0.0,
                   "optimizer": "adam", "bop_gamma": 0.0, "bop_threshold": 0.0, "loss": "cross-entropy",
                   "halve_every": 0, "weight_decay": 0.0, "crop_pad": 4}
RESCHEDULABLE = ("epochs", "lr", "warmup_epochs")  # a resumed run may change its schedule


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="octoray-train", description="Train CNV-W1A1 on the CIFAR-10 training JPEGs; "
                                "checkpoint every epoch and resume.")
    p.add_argument("--data", type=Path, help="cifar10-train.tar.gz (JPEGs, one folder per class); not needed by "
                                             "--progress and --save-portable")
    p.add_argument("--run", default="cnv-w1a1", help="run name: checkpoints go to <cache>/train/<run>")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.01, help="peak Adam learning rate")
    p.add_argument("--optimizer", choices=("adam", "bop"), default="adam",
                   help="bop: the binary weights are +-1 themselves (each latent weight starts as its sign) "
                        "and flip by Bop's rule (octoray/models/bop.py); the norms learn with Adam at --lr")
    p.add_argument("--weight-decay", type=float, default=0.0, metavar="L2",
                   help="Adam's weight decay (L2 added to the gradient) on the weights that binarise, the "
                        "convolutions' and dense layers' (none on the norms and scales): Liu et al. 2021 "
                        "give 5e-6 to a stage with real weights and 0 to the binary one; 0, the default: none")
    p.add_argument("--bop-gamma", type=float, default=1e-3,
                   help="with --optimizer bop: the rate of each weight's moving averages of its gradient and "
                        "its square at the peak learning rate (it follows the learning rate's schedule)")
    p.add_argument("--bop-threshold", type=float, default=0.2,
                   help="with --optimizer bop: a weight flips when that average, over the root of its squared "
                        "gradient's (between 0 and 1: how consistently the gradient asks), is above this")
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--val-per-class", type=int, default=500)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--ste", choices=("hardtanh", "approxsign"), default="hardtanh",
                   help="the activations' backward pass")
    p.add_argument("--teacher", type=Path, metavar="FILE", action="append",
                   help="distil from this float teacher (python -m octoray.models.teacher --save FILE), "
                        "or from an earlier stage's network (a portable file, train --save-portable); "
                        "given several times, an ensemble (the mean of their probabilities), or the teachers of "
                        "folds 1/N .. N/N (teacher --fold): each training image is answered by the one "
                        "that never trained on it")
    p.add_argument("--kd-weight", type=float, default=0.9,
                   help="with --teacher: the share of the loss that matches the teacher (the rest is the labels')")
    p.add_argument("--kd-temperature", type=float, default=1.0)
    p.add_argument("--kd-bank", type=int, default=0, metavar="K",
                   help="with --teacher: compute the teacher's outputs once, on K fixed crops/flips of each "
                        "image, and train on those variants (0, the default: the teacher runs on every batch)")
    p.add_argument("--teacher-precision", choices=("float", "int8"), default="float",
                   help="int8: the teacher quantized to 8 bits, its ranges measured on 2,000 augmented "
                        "training images; about three times faster on the CPU, its answers within about 1 %% "
                        "of the float teacher's (docs/training.md; CPU only)")
    p.add_argument("--weights", choices=("binary", "real"), default="binary",
                   help="real: the latent weights themselves in the forward pass, a first stage of a staged "
                        "recipe (its weights then seed a binary run through --init-from; it is never exported)")
    p.add_argument("--activations", choices=("binary", "real"), default="binary",
                   help="real: hardtanh instead of sign, a first stage of a staged recipe (as --weights real)")
    p.add_argument("--binarize-over", type=int, default=0, metavar="E",
                   help="from a real-weight model (--init-from a --weights real run): anneal its weights "
                        "into binary ones over the first E epochs, the forward pass using w + s (sign(w) - w) "
                        "with s rising linearly from 0 to 1; only epochs from E on are binary, and only they "
                        "count as the run's best (0, the default: binary from the first step)")
    p.add_argument("--binarize-order", choices=("blend", "magnitude"), default="blend",
                   help="with --binarize-over: blend (the default) as above; magnitude: sign(w) for the "
                        "weights largest in |w| of each layer and w for the rest, half of them binary from "
                        "the first step and half of those still real made binary every epoch, all from epoch E")
    p.add_argument("--guide", type=Path, metavar="FILE",
                   help="a fixed network of the same shape (a --save-portable file, such as a --weights "
                        "real first stage) whose normalised sums every hidden layer learns to match: the "
                        "loss adds --guide-weight x the mean squared difference of their hardtanh, layer "
                        "by layer (feature matching from a real-weight network, Martinez et al. 2020)")
    p.add_argument("--guide-weight", type=float, default=1.0,
                   help="with --guide: the weight of its matching term")
    p.add_argument("--norms", choices=("batch", "frozen"), default="batch",
                   help="frozen: BatchNorm and TensorNorm normalise with their running statistics, which "
                        "stay fixed, so training sees the thresholds inference folds (their scales and "
                        "offsets still learn); for a run that starts from a trained model")
    p.add_argument("--schedule", choices=("cosine", "constant", "halving"), default="cosine",
                   help="the learning rate after the warm-up: cosine down to zero at the last epoch, "
                        "constant (for runs whose epochs are averaged: python -m octoray.models.average), "
                        "or halving: the peak halved after every --halve-every epochs (Brevitas' bnn_pynq)")
    p.add_argument("--halve-every", type=int, default=40, metavar="E",
                   help="with --schedule halving: the epochs between two halvings")
    p.add_argument("--loss", choices=("cross-entropy", "squared-hinge"), default="cross-entropy",
                   help="what the labels' part of the loss is: cross-entropy, or squared-hinge, the mean "
                        "of max(0, 1 - t x)^2 over the logits x with t +1 for the label and -1 for the "
                        "other classes (Brevitas' bnn_pynq recipe)")
    p.add_argument("--crop-pad", type=int, default=4, choices=range(9), metavar="PAD",
                   help="the training images' random crop: padded by PAD pixels (0 to 8, default "
                        "%(default)s), cut back to 32x32 at a random place; 0 keeps each image whole "
                        "(a random flip only)")
    p.add_argument("--cutout", type=int, default=0, metavar="SIDE",
                   help="after the crop and flip, black out a SIDE x SIDE square of each training image "
                        "at a random place (0, the default: none)")
    p.add_argument("--mixup", action="store_true",
                   help="blend each training image with another (mixup, alpha 1); with a live --teacher "
                        "the teacher labels the blend")
    p.add_argument("--conv-gradients", choices=("float", "bf16"), default="float",
                   help="bf16: the backward pass of the convolutions of +-1 activations (conv2-conv6) in "
                        "bfloat16 (the +-1 inputs and weights are exact in it; the gradients, and real "
                        "weights, rounded to 8 bits) on a CPU with AMX, where it is faster; float32 "
                        "elsewhere, where bfloat16 would be emulated. The forward pass, what the network "
                        "computes, is float32 either way")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="auto",
                   help="auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N")
    p.add_argument("--max-epochs-this-run", type=int, default=None,
                   help="stop after this many epochs (the schedule still spans --epochs)")
    p.add_argument("--minutes", type=float, default=None,
                   help="fit the schedule into this run's time: after its first epoch, --epochs shrinks "
                        "to what ends within MINUTES (for a lent GPU, whose speed is not known beforehand)")
    p.add_argument("--keep-epochs-from", type=int, default=None, metavar="E",
                   help="keep the weights of every epoch from E on (<run>/epochs/), for "
                        "python -m octoray.models.average; training itself is unchanged")
    p.add_argument("--keep-portable", type=Path, metavar="FILE",
                   help="after every epoch, also write the run's state to FILE as --save-portable does: "
                        "a session cut off before it saves still leaves its newest epoch in the working tree")
    p.add_argument("--keep-best", type=Path, metavar="FILE",
                   help="after every epoch that is the run's best so far, also write its weights to FILE as "
                        "--save-portable --checkpoint best does: a session cut off after the run's end still "
                        "leaves the epoch that ships in the working tree")
    p.add_argument("--save-portable", type=Path, metavar="FILE",
                   help="write the run's last checkpoint as a small portable file (fp16 weights, Adam's "
                        "second moment, the random state) and exit: training can move to another machine with it")
    p.add_argument("--checkpoint", choices=("last", "best"), default="last",
                   help="with --save-portable: last (the default: what resuming needs) or best (the epoch "
                        "with the highest validation accuracy, weights only: what a shipped model folds from)")
    p.add_argument("--progress", action="store_true",
                   help="print where the run stands (epochs done, validation by epoch and by ten epochs, "
                        "best epoch, time left) from its history, and exit")
    p.add_argument("--resume-from", type=Path, metavar="FILE",
                   help="continue, on a machine without its checkpoint, the run a --save-portable file holds")
    p.add_argument("--init-from", type=Path, metavar="FILE",
                   help="start a new run (epoch 1, its own recipe) from the weights of a --save-portable file")
    args = p.parse_args(argv)
    if args.data is None and not (args.progress or args.save_portable):
        p.error("the following arguments are required: --data")
    return args


def same_recipe(saved: dict, recipe: dict) -> bool:
    """Whether a checkpoint's recipe is this one, but for what a resumed run may change."""
    full = {**RECIPE_DEFAULTS, **saved}
    return all(full.get(k) == v for k, v in recipe.items() if k not in RESCHEDULABLE)


def recipe_of(args: argparse.Namespace) -> dict:
    """The recipe the options give, with what an option does not use set to its default (a
    run without a teacher records no distillation weight), so equal runs record equal recipes."""
    recipe = {k: getattr(args, k) for k in RECIPE_KEYS}
    recipe["teacher"] = "+".join(path.name for path in args.teacher) if args.teacher else None
    recipe["init_from"] = args.init_from.name if args.init_from else None
    recipe["guide"] = args.guide.name if args.guide else None
    if not args.guide:
        recipe["guide_weight"] = 0.0
    if args.optimizer == "adam":
        recipe["bop_gamma"], recipe["bop_threshold"] = 0.0, 0.0
    if not args.teacher:
        recipe["kd_weight"], recipe["kd_bank"], recipe["teacher_precision"] = 0.0, 0, "float"
    if args.schedule != "halving":
        recipe["halve_every"] = 0
    return recipe


def conflicting_options(args: argparse.Namespace, recipe: dict, device_type: str) -> str | None:
    """Why these options cannot train together (the message after "train: "), or None."""
    if args.loss == "squared-hinge" and (args.mixup or args.label_smoothing):
        return "--loss squared-hinge takes one label an image: not with --mixup or --label-smoothing"
    if args.schedule == "halving" and args.halve_every < 1:
        return "--halve-every must be at least 1 epoch"
    if args.weight_decay < 0:
        return "--weight-decay must not be negative"
    if args.optimizer == "bop" and args.weight_decay:
        return "--optimizer bop flips binary weights, which have nothing to decay: not with --weight-decay"
    if args.optimizer == "bop" and (args.weights == "real" or args.binarize_over):
        return "--optimizer bop flips binary weights: not with --weights real or --binarize-over"
    if recipe["teacher_precision"] == "int8" and device_type != "cpu":
        return f"--teacher-precision int8 runs on the CPU only, not {device_type}"
    if args.binarize_over and args.weights == "real":
        return "--binarize-over anneals real weights into binary ones: not with --weights real"
    if recipe["kd_bank"] and (args.cutout or args.mixup or args.crop_pad != 4):
        return ("--cutout, --mixup and --crop-pad change the image the teacher must answer for: "
                "they need a live teacher, not --kd-bank")
    if args.teacher and len(args.teacher) > 1 and (recipe["kd_bank"] or args.mixup):
        return ("several teachers answer each image live (cross-fitted ones by the image's index, and a "
                "blend of two images has no teacher that saw neither): not with --kd-bank or --mixup")
    return None
