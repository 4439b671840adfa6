"""Train CNV-W1A1 on the CIFAR-10 training JPEGs; checkpoint every epoch and resume.

    python -m octoray.models.train --data ../shared/data/cifar10-train.tar.gz

Checkpoints live outside the repository (``$OCTORAY_CACHE/train/<run>``, default
``~/.cache/octoray/train/<run>``).  Killing the process loses at most the running epoch:
the same command picks up from ``last.pt``.  The learning schedule is a function of the
step number, so an interrupted run follows the same curve as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from octoray.engine.allocator import keep_freed_memory
from octoray.models.average import snapshot_path
from octoray.models.bop import Bop
from octoray.models.cnv import CNV
from octoray.models.portable import load_portable, model_from_portable, save_portable, write_portable
from octoray.models.runs import (augment, choose_device, cutout, evaluate, load_split, mixup, run_dir,
                                 save_atomically)
from octoray.models.tool import reports_file_errors

RECIPE_KEYS = ("epochs", "batch_size", "lr", "warmup_epochs", "seed", "split_seed", "val_per_class",
               "label_smoothing", "ste", "teacher", "kd_weight", "kd_temperature", "kd_bank", "teacher_precision",
               "init_from", "weights", "activations", "norms", "schedule", "cutout", "mixup", "conv_gradients",
               "binarize_over", "binarize_order", "guide", "guide_weight", "optimizer", "bop_gamma",
               "bop_threshold")
# what a checkpoint made before a key existed was trained with
RECIPE_DEFAULTS = {"init_from": None, "label_smoothing": 0.0, "ste": "hardtanh", "teacher": None, "kd_weight": 0.0,
                   "kd_temperature": 1.0, "kd_bank": 0, "teacher_precision": "float", "weights": "binary",
                   "activations": "binary", "norms": "batch", "schedule": "cosine",
                   "cutout": 0, "mixup": False, "conv_gradients": "float",
                   "binarize_over": 0, "binarize_order": "blend", "guide": None, "guide_weight": 0.0,
                   "optimizer": "adam", "bop_gamma": 0.0, "bop_threshold": 0.0}
RESCHEDULABLE = ("epochs", "lr", "warmup_epochs")  # a resumed run may change its schedule


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="octoray-train", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, help="cifar10-train.tar.gz (JPEGs, one folder per class); not needed by "
                                             "--progress and --save-portable")
    p.add_argument("--run", default="cnv-w1a1", help="run name: checkpoints go to <cache>/train/<run>")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.01, help="peak Adam learning rate")
    p.add_argument("--optimizer", choices=("adam", "bop"), default="adam",
                   help="bop: the binary weights are +-1 themselves (each latent weight starts as its sign) "
                        "and flip by Bop's rule (octoray/models/bop.py); the norms learn with Adam at --lr")
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
                        "given N times, the teachers of folds 1/N .. N/N (teacher --fold): each training "
                        "image is answered by the one that never trained on it")
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
    p.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                   help="the learning rate after the warm-up: cosine down to zero at the last epoch, or "
                        "constant (for runs whose epochs are averaged: python -m octoray.models.average)")
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


def _same_recipe(saved: dict, recipe: dict) -> bool:
    """Whether a checkpoint's recipe is this one, but for what a resumed run may change."""
    full = {**RECIPE_DEFAULTS, **saved}
    return all(full.get(k) == v for k, v in recipe.items() if k not in RESCHEDULABLE)


def learning_rate(step: int, steps_per_epoch: int, args) -> float:
    """Linear warm-up, then cosine decay to zero over the whole run (or, with --schedule
    constant, the peak from then on)."""
    warmup = max(1, int(args.warmup_epochs * steps_per_epoch))
    total = args.epochs * steps_per_epoch
    if step < warmup:
        return args.lr * (0.1 + 0.9 * step / warmup)
    if args.schedule == "constant":
        return args.lr
    progress = (step - warmup) / max(1, total - warmup)
    return args.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def binary_share(step: int, steps_per_epoch: int, args) -> float:
    """With --binarize-over E: the share of sign(w) in the weights at this step, 1 from the
    last step of epoch E on (a function of the step, as the learning rate is, so a resumed run
    follows the same curve); 1 without. The blend rises linearly; magnitude order halves the
    share still real every epoch from a half, since the larger half of the weights costs
    nothing to binarise and each half after it costs more (docs/training.md, item 21)."""
    if not args.binarize_over:
        return 1.0
    epochs = (step + 1) / steps_per_epoch
    if epochs >= args.binarize_over:
        return 1.0
    if args.binarize_order == "magnitude":
        return 1.0 - 0.5 ** (1.0 + epochs)
    return epochs / args.binarize_over


def plot_learning_curve(history: list[dict], path: Path, before: list[dict] | None = None) -> None:
    """Training and validation accuracy by epoch; `before` is the real-weight stage a staged
    recipe's binary stage started from, drawn first so the curve shows the whole schedule."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [*(before or []), *history]
    epochs = range(1, len(stages) + 1)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(epochs, [100 * h["train_acc"] for h in stages], label="train (augmented)")
    ax.plot(epochs, [100 * h["val_acc"] for h in stages], label="validation (5,000 held out)")
    ax.axhline(84.22, color="grey", linestyle=":", label="Brevitas CNV-W1A1 (84.22 %)")
    if before:
        ax.axvline(len(before) + 0.5, color="black", linewidth=0.8)
        ax.text(len(before) + 0.5, 0.03, " binary\n weights", transform=ax.get_xaxis_transform(), fontsize=8)
        ax.text(0.5, 0.03, " real weights,\n binary activations", transform=ax.get_xaxis_transform(), fontsize=8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("CNV-W1A1 training")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left" if before else "lower right", fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def progress(run: str, history: list[dict]) -> str:
    """Where a run stands, for the session notes: validation accuracy by epoch (ten a line)
    and its ten-epoch means, the best epoch, and the time left at the recent pace."""
    if not history:
        return f"{run}: no epoch done yet"
    done, total = history[-1]["epoch"], history[-1]["schedule_epochs"]
    lines = [f"{run}: {done} of {total} epochs, lr {history[-1]['lr']:.5f}"]
    for start in range(0, len(history), 10):
        part = history[start:start + 10]
        accs = [100 * h["val_acc"] for h in part]
        lines.append(f"  {part[0]['epoch']:>3}-{part[-1]['epoch']:<3} " + " ".join(f"{a:.2f}" for a in accs)
                     + f"  (mean {sum(accs) / len(accs):.2f})")
    binary = [h for h in history if h.get("binary_share", 1.0) >= 1.0] or history  # --binarize-over
    best, left = max(binary, key=lambda h: h["val_acc"]), total - done
    recent = sorted(h["seconds"] for h in history[-10:])[len(history[-10:]) // 2]
    lines.append(f"  best: {100 * best['val_acc']:.2f} % at epoch {best['epoch']}; "
                 f"{left} epoch{'s' * (left != 1)} left, about {left * recent / 3600:.1f} h at {recent:.0f} s an epoch")
    return "\n".join(lines)


def _print_progress(run: str) -> int:
    from octoray.models.data import cache_dir

    path = cache_dir() / "train" / run / "history.json"
    if not path.exists():
        print(f"train: no run {run} on this machine ({path.parent})", file=sys.stderr)
        return 1
    try:
        print(progress(run, json.loads(path.read_text())), flush=True)
    except BrokenPipeError:  # `| head`: the rest is not wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


@reports_file_errors("train")
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.progress:  # reads the history alone: no device, no recipe
        return _print_progress(args.run)
    torch.set_num_threads(args.threads)
    keep_freed_memory(1 << 30)  # a step's tensors are tens of MB: map them once, not every step
    device = choose_device(args.device)
    started = time.time()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    recipe = {k: getattr(args, k) for k in RECIPE_KEYS}
    recipe["teacher"] = "+".join(path.name for path in args.teacher) if args.teacher else None
    recipe["init_from"] = args.init_from.name if args.init_from else None
    recipe["guide"] = args.guide.name if args.guide else None
    if not args.guide:
        recipe["guide_weight"] = 0.0
    if args.optimizer == "adam":
        recipe["bop_gamma"], recipe["bop_threshold"] = 0.0, 0.0
    elif args.weights == "real" or args.binarize_over:
        print("train: --optimizer bop flips binary weights: not with --weights real or --binarize-over",
              file=sys.stderr)
        return 2
    if not args.teacher:
        recipe["kd_weight"], recipe["kd_bank"], recipe["teacher_precision"] = 0.0, 0, "float"
    if recipe["teacher_precision"] == "int8" and device.type != "cpu":
        print(f"train: --teacher-precision int8 runs on the CPU only, not {device.type}", file=sys.stderr)
        return 2
    if args.binarize_over and args.weights == "real":
        print("train: --binarize-over anneals real weights into binary ones: not with --weights real",
              file=sys.stderr)
        return 2
    if recipe["kd_bank"] and (args.cutout or args.mixup):
        print("train: --cutout and --mixup change the image the teacher must answer for: "
              "they need a live teacher, not --kd-bank", file=sys.stderr)
        return 2
    if args.teacher and len(args.teacher) > 1 and (recipe["kd_bank"] or args.mixup):
        print("train: several (cross-fitted) teachers answer each image live, and a blend of two images "
              "has no teacher that saw neither: not with --kd-bank or --mixup", file=sys.stderr)
        return 2
    out = run_dir(args.run)
    last = out / "last.pt"
    if args.save_portable:
        save_portable(out / f"{args.checkpoint}.pt", args.save_portable)
        print(f"wrote {args.save_portable} ({args.save_portable.stat().st_size:,} bytes)")
        return 0
    x_train, y_train, x_val, y_val = load_split(args, device)

    torch.manual_seed(args.seed)
    model = CNV(ste=args.ste, weights=args.weights, activations=args.activations).to(
        device, memory_format=torch.channels_last)  # faster CPU convolutions (docs/design.md)
    _count_gradients(model, args.conv_gradients, device)
    optimizer = make_optimizer(model, args)
    teacher = None
    if args.teacher:
        from octoray.models.teacher import calibration_images, load_teachers
        try:
            calibration = calibration_images(x_train) if recipe["teacher_precision"] == "int8" else None
            teacher = load_teachers(args.teacher, len(x_train), device, calibration)
        except (OSError, ValueError, KeyError) as e:
            print(f"train: --teacher: {e}", file=sys.stderr)
            return 2
    guide = None
    if args.guide:
        try:
            guide = model_from_portable(args.guide).to(device, memory_format=torch.channels_last)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            print(f"train: --guide: {e}", file=sys.stderr)
            return 2
    start_epoch, history, generator_state = 0, [], None
    if last.exists() or args.resume_from:
        if last.exists():
            state = torch.load(last, weights_only=False, map_location=device)
            whence = ""
        else:
            state = load_portable(args.resume_from, model, optimizer)
            whence = f" from {args.resume_from}" + ("" if state.get("optimizer") else " (fresh optimizer state)")
        if not _same_recipe(state["recipe"], recipe):
            print(f"train: {last if last.exists() else args.resume_from} was made with {state['recipe']}, "
                  f"not {recipe}; choose another --run (or --init-from to start a new run from its weights)",
                  file=sys.stderr)
            return 1
        changed = {k: (state["recipe"][k], recipe[k]) for k in RESCHEDULABLE if state["recipe"][k] != recipe[k]}
        if changed:
            print(f"train: schedule changed after epoch {state['epoch']}: {changed}", flush=True)
        if last.exists():
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        start_epoch, history = state["epoch"], state["history"]
        if state.get("generator") is not None:
            if state.get("device_type", "cpu") == device.type:
                generator_state = state["generator"]
            else:  # another device's generator state does not fit: a fresh stream from here on
                print(f"train: the checkpoint was made on {state.get('device_type', 'cpu')}, this run uses "
                      f"{device.type}: its random stream restarts from seed {args.seed + start_epoch}", flush=True)
        print(f"resuming {args.run} after epoch {start_epoch}{whence}", flush=True)
    elif args.init_from:
        load_portable(args.init_from, model)
        print(f"{args.run}: a new run from the weights of {args.init_from}", flush=True)
    if args.optimizer == "bop":
        model.snap_weights_to_signs()  # a new run's start; a resumed one's weights are +-1 already

    bank = None
    if teacher is not None and recipe["kd_bank"]:  # built (minutes) only once the recipe is known to fit
        from octoray.models import kd_bank
        bank = kd_bank.load_or_build(out / "teacher-bank.pt", teacher, recipe["teacher"], x_train,
                                     recipe["kd_bank"], args.seed)
    generator = torch.Generator(device=device).manual_seed(args.seed + start_epoch)
    if generator_state is not None:
        generator.set_state(generator_state.cpu())
    stop_at = args.epochs if args.max_epochs_this_run is None else min(args.epochs, start_epoch + args.max_epochs_this_run)
    plotted = 0.0
    epoch = start_epoch
    while epoch < stop_at:  # stop_at may shrink after the first epoch (--minutes)
        t0 = time.time()
        train_loss, train_acc, lr = train_epoch(model, optimizer, x_train, y_train, generator, epoch, args,
                                                teacher, bank, guide)
        val_acc, _ = evaluate(model, x_val, y_val)
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc,
                        "val_acc": val_acc, "lr": lr, "seconds": time.time() - t0,
                        "schedule_epochs": args.epochs, "device": device.type})
        if isinstance(optimizer, Bop):
            history[-1]["flips"] = optimizer.take_flips() / sum(w.numel() for w in model.binary_weights())
        if args.binarize_over:  # the share the epoch ended with, which validation saw
            steps = len(x_train) // args.batch_size
            history[-1]["binary_share"] = binary_share((epoch + 1) * steps - 1, steps, args)
        state = {"recipe": recipe, "epoch": epoch + 1, "history": history, "model": model.state_dict(),
                 "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                 "device_type": device.type}
        save_atomically(state, last)
        if args.keep_portable:
            write_portable(state, args.keep_portable)
        if epoch + 1 >= args.binarize_over and val_acc >= max(
                h["val_acc"] for h in history if h["epoch"] >= args.binarize_over):
            best = {"recipe": recipe, "epoch": epoch + 1, "history": history, "model": model.state_dict()}
            save_atomically(best, out / "best.pt")
            if args.keep_best:
                write_portable(best, args.keep_best)
        if args.keep_epochs_from is not None and epoch + 1 >= args.keep_epochs_from:
            kept = snapshot_path(args.run, epoch + 1)
            kept.parent.mkdir(exist_ok=True)
            save_atomically({"recipe": recipe, "epoch": epoch + 1, "model": model.state_dict()}, kept)
        (out / "history.json").write_text(json.dumps(history, indent=1))
        if time.time() - plotted > 60 or epoch + 1 == stop_at:  # a plot costs ~0.2 s; GPU epochs take seconds
            plot_learning_curve(history, out / "learning-curve.png")
            plotted = time.time()
        print(json.dumps(history[-1]), flush=True)
        if args.minutes is not None and epoch == start_epoch:
            stop_at = _fit_schedule(args, recipe, epoch + 1, stop_at, started, time.time() - t0)
        epoch += 1
    return 0


def make_optimizer(model: CNV, args) -> torch.optim.Optimizer:
    """Adam over every parameter, or Bop: its rule for the binary weights, Adam's for the rest."""
    if args.optimizer == "bop":
        return Bop(model.parameters(), model.binary_weights(), lr=args.lr, gamma=args.bop_gamma,
                   threshold=args.bop_threshold)
    return torch.optim.Adam(model.parameters(), lr=args.lr)


def _count_gradients(model: CNV, precision: str, device: torch.device) -> None:
    """--conv-gradients bf16 where it pays: on a CPU with AMX (the counted convolutions run
    only on the CPU); a run resumed on a machine without says so and computes in float32."""
    if precision != "bf16" or device.type != "cpu":
        return
    from octoray.models import popcount

    if popcount.bf16_is_native():
        model.count_gradients_in(torch.bfloat16)
    else:
        print("train: this CPU has no AMX, on which bfloat16 gradients pay: --conv-gradients bf16 "
              "computes them in float32 here", flush=True)


def train_epoch(model: CNV, optimizer, x_train: torch.Tensor, y_train: torch.Tensor,
                generator: torch.Generator, epoch: int, args, teacher=None, bank=None,
                guide: CNV | None = None) -> tuple[float, float, float]:
    """One pass over the shuffled training set; (mean loss, accuracy, last learning rate).
    With a teacher, the loss mixes the labels' cross-entropy with the KL divergence from the
    teacher's softened outputs on the same augmented batch (run now, or kept in a kd_bank);
    with a guide, it adds how far each hidden layer's sums are from the guide's (--guide)."""
    model.train()
    if args.norms == "frozen":
        model.freeze_norms()
    device = x_train.device
    steps = len(x_train) // args.batch_size
    order = torch.randperm(len(x_train), generator=generator, device=device)
    # the sums stay on the device until the epoch ends: a GPU is not stopped at every step
    correct = torch.zeros((), dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for step in range(steps):
        lr = learning_rate(epoch * steps + step, steps, args)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if args.binarize_over:
            model.blend_weights(binary_share(epoch * steps + step, steps, args), args.binarize_order)
        batch = order[step * args.batch_size:(step + 1) * args.batch_size]
        if bank is not None:
            x, taught = bank.sample(x_train, batch, generator)
        else:
            x = augment(x_train[batch], generator)
        if args.cutout:
            x = cutout(x, args.cutout, generator)
        y = y_train[batch]
        if args.mixup:
            x, partner, weight = mixup(x, generator)
        x = x.contiguous(memory_format=torch.channels_last)
        taps = [] if guide is not None else None
        logits = model(x, taps)
        if args.mixup:
            loss = (weight * F.cross_entropy(logits, y, reduction="none", label_smoothing=args.label_smoothing)
                    + (1 - weight) * F.cross_entropy(logits, y[partner], reduction="none",
                                                     label_smoothing=args.label_smoothing)).mean()
        else:
            loss = F.cross_entropy(logits, y, label_smoothing=args.label_smoothing)
        if teacher is not None:
            t = args.kd_temperature
            with torch.no_grad():
                if bank is None:  # several teachers: each image's own, by its index
                    taught = teacher(x, batch) if len(args.teacher) > 1 else teacher(x)
                soft = F.softmax(taught / t, dim=1)
            kd = F.kl_div(F.log_softmax(logits / t, dim=1), soft, reduction="batchmean") * (t * t)
            loss = (1 - args.kd_weight) * loss + args.kd_weight * kd
        if guide is not None:
            loss = loss + args.guide_weight * guide_distance(guide, x, taps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.clip_weights()
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
    seen = steps * args.batch_size
    return loss_sum.item() / seen, correct.item() / seen, lr


def guide_distance(guide: CNV, x: torch.Tensor, taps: list[torch.Tensor]) -> torch.Tensor:
    """The mean over hidden layers of the mean squared difference between the student's
    normalised sums (`taps`, from its forward pass on x) and the guide's, both through
    hardtanh: what matters is the side of zero each lands on, and by how little."""
    guided: list[torch.Tensor] = []
    with torch.no_grad():
        guide(x, guided)
    return torch.stack([F.mse_loss(F.hardtanh(s), F.hardtanh(g)) for s, g in zip(taps, guided)]).mean()


def _fit_schedule(args, recipe: dict, done: int, stop_at: int, started: float, per_epoch: float) -> int:
    """After the run's first epoch (which took per_epoch seconds, evaluation and checkpoint
    included): shrink the schedule to the epochs that fit in --minutes from the run's start,
    with 5 % to spare, and return the new last epoch of this run.  The next checkpoint records
    the new length (a run killed before it shrinks its schedule again when restarted)."""
    left = 0.95 * 60 * args.minutes - (time.time() - started)
    fits = done + int(max(0.0, left) // per_epoch)
    if fits < args.epochs:
        print(f"train: {args.epochs} epochs do not fit in {args.minutes:g} minutes "
              f"({per_epoch:.1f} s an epoch): the schedule now ends after epoch {fits}", flush=True)
        args.epochs = recipe["epochs"] = fits
    return min(stop_at, args.epochs)


if __name__ == "__main__":
    sys.exit(main())
