"""Train CNV-W1A1 on the CIFAR-10 training JPEGs; checkpoint every epoch and resume.

    python -m octoray.models.train --data ../shared/data/cifar10-train.tar.gz

Checkpoints live outside the repository (``$OCTORAY_CACHE/train/<run>``, default
``~/.cache/octoray/train/<run>``).  Killing the process loses at most the running epoch:
the same command picks up from ``last.pt``.  The learning schedule is a function of the
step number, so an interrupted run follows the same curve as an uninterrupted one.
"""

from __future__ import annotations

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
from octoray.models.train_options import RESCHEDULABLE, conflicting_options, parse_args, recipe_of, same_recipe

def learning_rate(step: int, steps_per_epoch: int, args) -> float:
    """Linear warm-up, then cosine decay to zero over the whole run (or, with --schedule
    constant, the peak from then on; with halving, the peak halved after every --halve-every
    epochs)."""
    warmup = max(1, int(args.warmup_epochs * steps_per_epoch))
    total = args.epochs * steps_per_epoch
    if step < warmup:
        return args.lr * (0.1 + 0.9 * step / warmup)
    if args.schedule == "constant":
        return args.lr
    if args.schedule == "halving":
        return args.lr * 0.5 ** (step // (args.halve_every * steps_per_epoch))
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
    recipe = recipe_of(args)
    problem = conflicting_options(args, recipe, device.type)
    if problem:
        print(f"train: {problem}", file=sys.stderr)
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
        if not same_recipe(state["recipe"], recipe):
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
            x = augment(x_train[batch], generator, args.crop_pad)
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
        elif args.loss == "squared-hinge":
            loss = squared_hinge(logits, y)
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
        if args.weight_decay:  # Adam's own (L2 in the gradient), on the binarising weights alone
            decay_weights(model, args.weight_decay)
        optimizer.step()
        model.clip_weights()
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
    seen = steps * args.batch_size
    return loss_sum.item() / seen, correct.item() / seen, lr


@torch.no_grad()
def decay_weights(model: CNV, weight_decay: float) -> None:
    """Adds weight_decay x w to each binarising weight's gradient, as Adam's weight_decay does,
    leaving the norms and scales undecayed; one optimizer group keeps the portable file's order."""
    for weight in model.binary_weights():
        weight.grad.add_(weight, alpha=weight_decay)


def squared_hinge(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Brevitas' bnn_pynq loss: the mean over every logit of max(0, 1 - t x)^2, t +1 for the
    label's logit and -1 for the others'."""
    targets = F.one_hot(labels, logits.shape[1]).to(logits.dtype).mul_(2).sub_(1)
    return F.relu(1 - targets * logits).square().mean()


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
