"""A small float CNN that teaches CNV-W1A1 (knowledge distillation).

    python -m octoray.models.teacher --data ../shared/data/cifar10-train.tar.gz --threads 2

A binary network learns more from a good float network's soft outputs than from one-hot
labels alone.  The teacher trains on the same 45,000 training images as the student (never
the validation split), checkpoints every epoch outside the repository and resumes, and is
saved as a small fp16 file (``--save FILE``) that the student's training runs forward on
each augmented batch.

A teacher that has learnt its training images by heart answers for them with little more
than their labels: ``--fold K/N`` holds fold K of a fixed partition of the training images
out of its training, and the student, given the N teachers of the N folds, takes each
image's soft labels from the teacher that never saw it (cross-fitting).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from octoray.engine.allocator import keep_freed_memory
from octoray.models.runs import augment, choose_device, folds, load_split, run_dir, save_atomically
from octoray.models.tool import reports_file_errors

WIDTHS = (32, 64, 128, 128)  # stem, then three groups that halve the resolution


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.GELU()]


class Teacher(nn.Module):
    """Stem, three (conv, pool, conv) groups, global max pool, linear.  Input: uint8 NCHW."""

    def __init__(self, widths: tuple[int, ...] = WIDTHS):
        super().__init__()
        layers = _conv_bn(3, widths[0])
        for cin, cout in zip(widths, widths[1:]):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.MaxPool2d(2),
                       nn.BatchNorm2d(cout), nn.GELU(), *_conv_bn(cout, cout)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(widths[-1], 10, bias=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.float() / 127.5 - 1.0
        x = self.body(x).amax(dim=(2, 3))
        return self.head(x) / 8.0  # a small logit scale trains more stably with label smoothing


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="octoray-teacher", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--run", default="teacher")
    p.add_argument("--epochs", type=int, default=14)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.2, help="peak SGD (Nesterov) learning rate")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--val-per-class", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--widths", type=_widths, metavar="W,W,W,W",
                   help=f"the stem's channels, then each group's (default: {','.join(map(str, WIDTHS))}); "
                        "a run keeps its own")
    p.add_argument("--fold", type=_fold, metavar="K/N",
                   help="hold fold K of N (a fixed partition of the training images) out of this teacher's "
                        "training, so that its outputs on them are predictions, not memories; a run keeps its own")
    p.add_argument("--examine", type=Path, metavar="FILE", action="append",
                   help="print what a saved teacher tells a student: its accuracy, the probability it gives "
                        "the true class and the runner-up, on the training images it learnt (augmented as "
                        "the student sees them), on those it held out (--fold) and on the validation split")
    p.add_argument("--int8", action="store_true",
                   help="with --examine: also the teacher quantized to 8 bits as train --teacher-precision int8 "
                        "makes it, and how often and how far its answers differ from the float teacher's")
    p.add_argument("--ensemble", action="store_true",
                   help="with --examine FILE --examine FILE ...: also the files as one ensemble, as "
                        "train --teacher FILE --teacher FILE ... uses them (the mean of their probabilities)")
    p.add_argument("--save", type=Path, metavar="FILE", help="write the trained teacher as fp16 weights and exit")
    p.add_argument("--keep-portable", type=Path, metavar="FILE",
                   help="after every epoch, write the run's state (fp16 weights, the random "
                        "generator, the history) to FILE: a fresh machine resumes from it (--resume-from)")
    p.add_argument("--save-portable", type=Path, metavar="FILE",
                   help="write the run's checkpoint as --keep-portable's file and exit")
    p.add_argument("--resume-from", type=Path, metavar="FILE",
                   help="continue from a --keep-portable file where this machine has no checkpoint of the run")
    return p.parse_args(argv)


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        widths = ()
    if len(widths) < 2 or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of channel counts such as 32,64,128,128")
    return widths


def _fold(text: str) -> tuple[int, int]:
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        k = n = 0
    if not 1 <= k <= n or n < 2:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fold such as 1/2 (fold K of N, 1 <= K <= N, N >= 2)")
    return k, n


def held_out(fold: tuple[int, int] | None, n: int) -> torch.Tensor:
    """Which of the n training images a teacher of this fold never trains on (none without one)."""
    if fold is None:
        return torch.zeros(n, dtype=torch.bool)
    k, count = fold
    return folds(n, count) == k - 1


def spread(mask: torch.Tensor, most: int = 5000) -> torch.Tensor:
    """About `most` of the indices where mask is true, evenly strided: the images are stored
    class by class, so the first few thousand would be two or three classes."""
    chosen = mask.nonzero().flatten()
    return chosen[::max(1, len(chosen) // most)]


def learning_rate(step: int, total: int, peak: float) -> float:
    """Linear up over the first fifth, then linearly down to zero."""
    up = max(1, total // 5)
    return peak * (step / up if step < up else max(0.0, (total - step) / (total - up)))


def save_teacher(model: Teacher, path: Path, meta: dict) -> None:
    arrays = {k: v.detach().cpu().half().numpy() if v.is_floating_point() else v.cpu().numpy()
              for k, v in model.state_dict().items()}
    np.savez_compressed(path, metadata=np.array(json.dumps(meta)), **arrays)


def write_state(state: dict, path: Path) -> None:
    """A teacher run's checkpoint as one small file (fp16 weights, the random generator, the
    history; SGD's momentum, as large again, rebuilds itself within ~10 steps), so that a run
    cut off by a session's end continues on a fresh machine from its last epoch, not its first."""
    arrays = {f"model.{k}": v.cpu().half().numpy() if v.is_floating_point() else v.cpu().numpy()
              for k, v in state["model"].items()}
    arrays["generator"] = state["generator"].cpu().numpy()
    meta = {"epoch": state["epoch"], "widths": list(state["widths"]), "history": state["history"],
            "fold": list(state["fold"]) if state.get("fold") else None}
    tmp = path.with_name(path.name + ".tmp")  # replaced whole: a reader never sees half a file
    with open(tmp, "wb") as f:
        np.savez_compressed(f, state=np.array(json.dumps(meta)), **arrays)
    os.replace(tmp, path)


def read_state(path: Path) -> dict:
    """write_state's file as a checkpoint without the optimizer's state (SGD starts it anew)."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["state"]))
        as_tensor = lambda a: torch.from_numpy(a.astype(np.float32) if a.dtype == np.float16 else a)  # noqa: E731
        meta["model"] = {k[len("model."):]: as_tensor(z[k]) for k in z.files if k.startswith("model.")}
        meta["generator"] = torch.from_numpy(z["generator"])
    return meta


def load_teacher(path: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """A saved float teacher, or a CNV portable file (train --save-portable): the network of
    an earlier stage, as its recipe trained it, teaching the next one (Real-to-Binary's
    previous stage as the teacher; docs/training.md)."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["metadata"]))
        if "widths" not in meta and "recipe" in meta:
            from octoray.models.portable import model_from_portable

            return model_from_portable(path).to(device, memory_format=torch.channels_last), meta
        state = {k: torch.from_numpy(z[k].astype(np.float32) if z[k].dtype == np.float16 else z[k])
                 for k in z.files if k != "metadata"}
    model = Teacher(tuple(meta["widths"]))
    model.load_state_dict(state)
    return model.to(device, memory_format=torch.channels_last).eval(), meta


class CrossFitted(nn.Module):
    """The teachers of the N folds as one: each training image (by its index in the training
    set) is answered by the teacher that held its fold out."""

    def __init__(self, teachers: list[Teacher], fold_of_image: torch.Tensor):
        super().__init__()
        self.teachers = nn.ModuleList(teachers)
        self.register_buffer("fold_of_image", fold_of_image)

    def forward(self, pixels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        fold = self.fold_of_image[index]
        out = torch.empty(len(pixels), 10, device=pixels.device)
        for k, teacher in enumerate(self.teachers):
            mine = fold == k
            if mine.any():
                out[mine] = teacher(pixels[mine])
        return out


class Ensemble(nn.Module):
    """Teachers trained alike (another seed each) as one: the mean of their softmax
    probabilities, returned as its logarithm so that a student's softmax of it is that mean.
    Averaging their answers makes a stronger teacher without a larger network."""

    def __init__(self, teachers: list[nn.Module]):
        super().__init__()
        self.teachers = nn.ModuleList(teachers)

    def forward(self, pixels: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        p = torch.stack([F.softmax(teacher(pixels).float(), 1) for teacher in self.teachers]).mean(0)
        return p.clamp_min(1e-12).log()


def quantized(teacher: nn.Module, calibration: torch.Tensor, batch: int = 100) -> nn.Module:
    """The teacher with 8-bit weights (per channel) and activations, on PyTorch's x86 backend,
    its activation ranges measured on `calibration` (uint8 NCHW training images, augmented as
    the student sees them).  It answers about three times faster on the CPU, and almost as the
    float teacher does (docs/training.md: how close, and what it saves an epoch)."""
    import copy
    import warnings

    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():  # torch.ao's FX quantization is deprecated for torchao's, but here
        warnings.simplefilter("ignore")
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        observed = prepare_fx(copy.deepcopy(teacher).eval(), get_default_qconfig_mapping("x86"),
                              example_inputs=(calibration[:batch],))
        with torch.inference_mode():
            for i in range(0, len(calibration), batch):
                observed(calibration[i:i + batch].contiguous(memory_format=torch.channels_last))
        return convert_fx(observed).eval()


def calibration_images(x_train: torch.Tensor, count: int = 2000) -> torch.Tensor:
    """The augmented training images an int8 teacher's ranges are measured on: always the
    same ones, so that a resumed run quantizes its teacher to the same network."""
    generator = torch.Generator(device=x_train.device).manual_seed(12345)
    chosen = torch.randperm(len(x_train), generator=generator, device=x_train.device)[:count]
    return augment(x_train[chosen], generator)


def load_teachers(paths: list[Path], n_train: int, device: torch.device | str = "cpu",
                  calibration: torch.Tensor | None = None):
    """One teacher (called with the pixels alone); several that hold no fold out as one
    Ensemble; or the N teachers of N folds as one CrossFitted (called with the pixels and the
    images' indices).  ValueError when several files are neither.  With `calibration`
    images, each teacher is quantized() to 8 bits (CPU only)."""
    loaded = [load_teacher(path, device) for path in paths]
    if calibration is not None:  # a CNV teacher's activations are +-1 already: it runs as trained
        loaded = [(quantized(model, calibration) if isinstance(model, Teacher) else model, meta)
                  for model, meta in loaded]
    if len(loaded) == 1:
        return loaded[0][0]
    folds_of = {path.name: tuple(meta.get("fold") or ()) for path, (_, meta) in zip(paths, loaded)}
    if not any(folds_of.values()):
        return Ensemble([model for model, _ in loaded]).eval()
    counts = {fold[1] for fold in folds_of.values() if fold}
    held = sorted(fold[0] for fold in folds_of.values() if fold)
    if len(counts) != 1 or held != list(range(1, len(paths) + 1)) or len(paths) != counts.pop():
        described = ", ".join(f"{name}: {'/'.join(map(str, f)) if f else 'no fold'}" for name, f in folds_of.items())
        raise ValueError("several teachers must all hold no fold out (an ensemble) or be the teachers of "
                         f"folds 1/N .. N/N of one partition ({described})")
    ordered = sorted(zip(paths, loaded), key=lambda item: item[1][1]["fold"][0])
    return CrossFitted([model for _, (model, _) in ordered], folds(n_train, len(paths)).to(device)).eval()


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 500) -> float:
    """Accuracy with the flip averaged in (test-time augmentation)."""
    model.eval()
    correct = 0
    for i in range(0, len(images), batch):
        x = images[i:i + batch].contiguous(memory_format=torch.channels_last)
        logits = model(x) + model(x.flip(3))
        correct += (logits.argmax(1) == labels[i:i + batch]).sum().item()
    return correct / len(images)


@torch.no_grad()
def soft_labels(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 500) -> str:
    """Accuracy (one view), and the mean softmax probability of the true class and of the
    runner-up: a teacher that gives its training images ~0.8 and ~0.02 (label smoothing's
    targets) tells a student little more than the labels do."""
    p = torch.cat([F.softmax(model(images[i:i + batch].contiguous(memory_format=torch.channels_last)), 1)
                   for i in range(0, len(images), batch)])
    top2 = p.topk(2, dim=1).values
    right = p.argmax(1) == labels
    return (f"{100 * right.float().mean():.2f} % right, p(true class) {p[torch.arange(len(p)), labels].mean():.3f}, "
            f"p(runner-up) {top2[:, 1].mean():.3f} ({len(p):,} images)")


def examine(paths: list[Path], args, device: torch.device) -> int:
    """--examine: soft_labels for each teacher file on ~5,000 of the images it learnt, of
    those it held out (a fold teacher) and on the validation split."""
    x_train, y_train, x_val, y_val = load_split(args, device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    for path in paths:
        model, meta = load_teacher(path, device)
        out = held_out(tuple(meta["fold"]) if meta.get("fold") else None, len(x_train)).to(device)
        learnt = spread(~out)
        print(f"{path}: learnt: {soft_labels(model, augment(x_train[learnt], generator), y_train[learnt])}")
        if out.any():
            kept = spread(out)
            print(f"{path}: held out: {soft_labels(model, augment(x_train[kept], generator), y_train[kept])}")
        print(f"{path}: validation: {soft_labels(model, x_val, y_val)}")
        if args.int8 and isinstance(model, Teacher):
            int8 = quantized(model, calibration_images(x_train))
            seen = augment(x_train[learnt], generator)
            print(f"{path} int8: learnt: {soft_labels(int8, seen, y_train[learnt])}; {_gap(model, int8, seen)}")
            print(f"{path} int8: validation: {soft_labels(int8, x_val, y_val)}; {_gap(model, int8, x_val)}")
    if args.ensemble:
        together = Ensemble([load_teacher(path, device)[0] for path in paths]).eval()
        name = "+".join(path.name for path in paths)
        learnt = spread(torch.ones(len(x_train), dtype=torch.bool, device=device))
        print(f"{name}: learnt: {soft_labels(together, augment(x_train[learnt], generator), y_train[learnt])}")
        print(f"{name}: validation: {soft_labels(together, x_val, y_val)}; "
              f"{100 * evaluate(together, x_val, y_val):.2f} % with the flip averaged in")
    return 0


@torch.no_grad()
def _gap(model: nn.Module, other: nn.Module, images: torch.Tensor, batch: int = 500) -> str:
    """How often two teachers' top answers differ, and the mean total variation between their
    softmax outputs."""
    top = tv = 0.0
    for i in range(0, len(images), batch):
        x = images[i:i + batch].contiguous(memory_format=torch.channels_last)
        p, q = F.softmax(model(x), 1), F.softmax(other(x), 1)
        top += (p.argmax(1) != q.argmax(1)).sum().item()
        tv += (p - q).abs().sum().item() / 2
    return f"top answer differs on {100 * top / len(images):.2f} %, total variation {tv / len(images):.4f}"


@reports_file_errors("teacher")
def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory(1 << 30)  # a step's tensors are tens of MB: map them once, not every step
    device = choose_device(args.device)
    if args.examine:
        return examine(args.examine, args, device)
    out = run_dir(args.run)
    last = out / "last.pt"
    torch.manual_seed(args.seed)
    if args.save_portable:
        write_state(torch.load(last, weights_only=False, map_location="cpu"), args.save_portable)
        print(f"wrote {args.save_portable} ({args.save_portable.stat().st_size:,} bytes)")
        return 0
    state = (torch.load(last, weights_only=False, map_location=device) if last.exists()
             else read_state(args.resume_from) if args.resume_from else None)
    widths = tuple(state.get("widths", WIDTHS)) if state else (args.widths or WIDTHS)
    if args.widths and widths != args.widths:
        print(f"teacher: {last} has widths {widths}, not {args.widths}; choose another --run", file=sys.stderr)
        return 1
    fold = (tuple(state["fold"]) if state.get("fold") else None) if state else args.fold
    if args.fold and fold != args.fold:
        print(f"teacher: {last} holds out fold {fold and '/'.join(map(str, fold))}, not "
              f"{'/'.join(map(str, args.fold))}; choose another --run", file=sys.stderr)
        return 1
    model = Teacher(widths).to(device, memory_format=torch.channels_last)
    decay = [p for p in model.parameters() if p.dim() > 1]
    rest = [p for p in model.parameters() if p.dim() <= 1]
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": args.weight_decay},
                                 {"params": rest, "weight_decay": 0.0}],
                                lr=args.lr, momentum=0.9, nesterov=True)
    start, history = 0, []
    generator = torch.Generator(device=device).manual_seed(args.seed)
    if state:
        model.load_state_dict(state["model"])
        if "optimizer" in state:  # a write_state file has none: SGD's momentum rebuilds itself
            optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"].cpu())
        start, history = state["epoch"], state["history"]
        whence = "" if last.exists() else f" from {args.resume_from}"
        print(f"resuming {args.run} after epoch {start}{whence}", flush=True)
    if args.save:
        meta = {"widths": list(widths), "fold": list(fold) if fold else None, "epochs": start, "history": history,
                "val_acc_flip_tta": history[-1]["val_acc"] if history else None,
                "command": "python -m octoray.models.teacher " + " ".join(sys.argv[1:])}
        save_teacher(model, args.save, meta)
        print(f"wrote {args.save} ({args.save.stat().st_size:,} bytes)")
        return 0
    x_train, y_train, x_val, y_val = load_split(args, device)
    out_of_fold = held_out(fold, len(x_train)).to(device)
    kept = spread(out_of_fold)
    x_oof, y_oof = x_train[kept], y_train[kept]
    x_train, y_train = x_train[~out_of_fold], y_train[~out_of_fold]
    steps = len(x_train) // args.batch_size
    total = args.epochs * steps
    for epoch in range(start, args.epochs):
        t0 = time.time()
        model.train()
        order = torch.randperm(len(x_train), generator=generator, device=device)
        loss_sum = 0.0
        for step in range(steps):
            lr = learning_rate(epoch * steps + step, total, args.lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = order[step * args.batch_size:(step + 1) * args.batch_size]
            x = augment(x_train[batch], generator).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(x), y_train[batch], label_smoothing=args.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item()
        val_acc = evaluate(model, x_val, y_val)
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / steps, "val_acc": val_acc,
                        "seconds": time.time() - t0})
        if fold:  # on ~5,000 of the training images it holds out: what a student will see
            history[-1]["held_out_acc"] = evaluate(model, x_oof, y_oof)
        checkpoint = {"epoch": epoch + 1, "widths": widths, "fold": fold, "history": history,
                      "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "generator": generator.get_state()}
        save_atomically(checkpoint, last)
        if args.keep_portable:  # from memory: the checkpoint just written is not read back
            write_state(checkpoint, args.keep_portable)
        (out / "history.json").write_text(json.dumps(history, indent=1))
        print(json.dumps(history[-1]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
