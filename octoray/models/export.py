"""Fold a trained CNV-W1A1 into the integer model file that every kernel runs.

    python -m octoray.models.export --data ../shared/data/cifar10-train.tar.gz
    python -m octoray.models.export --qonnx cnv_w1a1.onnx [--data ARCHIVE]   # for FINN (qonnx extra)

BatchNorm followed by sign becomes one integer threshold per channel (FINN's method).  The
threshold is read off the trained BatchNorm module itself, evaluated on every integer value
the layer's accumulator can take, so the integer model agrees with the float model bit for
bit wherever float rounding near zero could otherwise flip a sign.  Channels whose
BatchNorm scale is negative have their weights negated (their output falls as the sum
rises).  Export then checks the integer model against the float model on the whole
validation split and stores both accuracies in the file's metadata.

``--qonnx`` writes an integer model (the shipped one by default) as the QONNX graph FINN's
build_dataflow compiles (octoray.models.qonnx_export), after checking that qonnx's executor
gives the CPU kernel's label on every image it is tried on.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import numpy as np

from octoray.formats.cnv_input import CLASS_NAMES
from octoray.formats.cnv_model import DEFAULT_PATH, CnvModel, ModelFormatError, fan_in
from octoray.kernels import cnv_reference
from octoray.models.tool import reports_file_errors

PROG = "octoray-export"
QONNX_CHECK_IMAGES = 500  # validation images the QONNX graph is checked on when --data is given
SYNTHETIC_IMAGES = 200  # and images it is always checked on


def _binary(weight) -> np.ndarray:
    """+-1 weights as int8 (cout, K), K in (kh, kw, cin) order for convolutions."""
    w = weight.detach()
    if w.dim() == 4:
        w = w.permute(0, 2, 3, 1)
    return np.where(w.reshape(w.shape[0], -1).numpy() >= 0, 1, -1).astype(np.int8)


def _fold(bn, candidates: np.ndarray, scale: float, weights: np.ndarray,
          flipped_accumulator) -> tuple[np.ndarray, np.ndarray]:
    """Thresholds (and weights, negated where needed) such that ``acc >= T`` equals
    ``bn(acc * scale) >= 0`` for every candidate accumulator value (ascending)."""
    import torch

    channels = weights.shape[0]
    values = torch.tensor(candidates * scale, dtype=torch.float32)
    grid = values[:, None].expand(len(candidates), channels).contiguous()
    with torch.no_grad():
        if isinstance(getattr(bn, "bn", bn), torch.nn.BatchNorm2d):
            fires = (bn(grid[:, :, None, None])[:, :, 0, 0] >= 0).numpy()
        else:
            fires = (bn(grid) >= 0).numpy()
    thresholds = np.empty(channels, dtype=np.int64)
    weights = weights.copy()
    beyond = candidates[-1] + 1
    for c in range(channels):
        on = fires[:, c]
        if not on.any():
            thresholds[c] = beyond
        elif on.all() or (np.diff(on.astype(np.int8)) >= 0).all():  # rising: acc >= first
            thresholds[c] = candidates[np.argmax(on)]
        elif (np.diff(on.astype(np.int8)) <= 0).all():  # falling: negate the weights
            weights[c] = -weights[c]
            last_on = candidates[len(on) - 1 - np.argmax(on[::-1])]
            thresholds[c] = flipped_accumulator(last_on)
        else:
            raise ValueError(f"channel {c}: BatchNorm output is not monotonic")
    return thresholds, weights


def _training_command(recipe: dict, device: str | None) -> str:
    """The train command that reproduces the recipe: every recipe key as its flag (files named
    as they are in training/), so the shipped file says how it was made, distillation included."""
    flags = []
    for key, value in recipe.items():
        unused = ((key.startswith("kd_") and not recipe.get("teacher"))
                  or (key == "guide_weight" and not recipe.get("guide"))
                  or (key.startswith("bop_") and recipe.get("optimizer") != "bop")
                  or (key == "halve_every" and recipe.get("schedule") != "halving"))
        if value is None or unused:  # an option that recipe does not use
            continue
        flag = f"--{key.replace('_', '-')}"
        if isinstance(value, bool):  # a switch (--mixup): named when on
            flags += [flag] if value else []
            continue
        if key in ("teacher", "init_from", "guide"):
            value = f"training/{value}"
        flags.append(f"{flag} {value}")
    if device == "cuda":
        flags.append("--device cuda")
    return "python -m octoray.models.train --data cifar10-train.tar.gz " + " ".join(flags)


def export(model) -> tuple[dict, dict]:
    """A trained CNV (octoray.models.cnv) folded: packed +-1 weights and integer thresholds."""
    model.eval()
    bits, thresholds = {}, {}
    # conv1: acc = sum(q * w) with q in -128..127; the float layer sees acc / 128
    k = fan_in("conv1")
    acc = np.arange(-128 * k, 127 * k + 1)
    t, w = _fold(model.conv_bns[0], acc, 1 / 128, _binary(model.convs[0].weight), lambda a: -a)
    thresholds["conv1"], bits["conv1"] = t, w
    layers = [(f"conv{i + 1}", model.convs[i].weight, model.conv_bns[i]) for i in range(1, 6)]
    layers += [(f"fc{i + 1}", model.fcs[i].weight, model.fc_bns[i]) for i in range(2)]
    for name, weight, bn in layers:
        k = fan_in(name)
        popcounts = np.arange(0, k + 1)
        # the float layer sees 2p - K; with negated weights the popcount is K - p
        t, w = _fold(_AffineOfPopcount(bn, k), popcounts, 1.0, _binary(weight), lambda p, k=k: k - p)
        thresholds[name], bits[name] = t, w
    w3 = _binary(model.fcs[2].weight)
    if model.tensor_norm.weight.item() < 0:  # a negative scale reverses the logits' order
        w3 = -w3
    bits["fc3"] = w3
    packed = {name: np.packbits(w > 0, axis=1, bitorder="little") for name, w in bits.items()}
    return packed, {name: t.astype(np.int32) for name, t in thresholds.items()}


class _AffineOfPopcount:
    """The BatchNorm of a binary layer, fed the popcount p instead of its input 2p - K."""

    def __init__(self, bn, k):
        self.bn, self.k = bn, k

    def __call__(self, p):
        return self.bn(2 * p - self.k)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, help="the CIFAR-10 training archive (required but with --qonnx, "
                                              "where it adds a check on validation images)")
    p.add_argument("--run", default="cnv-w1a1")
    p.add_argument("--checkpoint", choices=("best", "last"), default=None,
                   help="best (the default): the epoch with the highest validation accuracy")
    p.add_argument("--from-portable", type=Path, metavar="FILE",
                   help="export a `train --save-portable` file (a run made elsewhere, e.g. on a GPU) "
                        "instead of a checkpoint of --run")
    p.add_argument("--out", type=Path, default=DEFAULT_PATH)
    p.add_argument("--plot", type=Path, default=None, help="also draw the learning curve here")
    p.add_argument("--limit", type=int, default=None,
                   help="check only the first N validation images (a dry run; the shipped file checks all); "
                        f"with --qonnx, check N images spread over the classes (default {QONNX_CHECK_IMAGES})")
    p.add_argument("--qonnx", type=Path, metavar="FILE",
                   help="write a QONNX graph for FINN's build_dataflow instead (needs the qonnx extra): "
                        "the shipped model, or --model, --from-portable, --checkpoint; checked label for "
                        "label against the CPU kernel before it is written")
    p.add_argument("--model", type=Path, metavar="FILE",
                   help="with --qonnx: the integer model file to write (default: the shipped model)")
    p.add_argument("--qonnx-output", choices=("top1", "popcounts"), default=None,
                   help="with --qonnx: what the graph ends with: top1 (the default, FINN's CNV flow: TopK, "
                        "the class) or popcounts (fc3's outputs: a card built from it returns the scores "
                        "that --views and --top-k need)")
    return p


def _load_float(args):
    """The float CNV of a portable file or of a checkpoint of --run, and its training state."""
    import torch

    from octoray.models.cnv import CNV
    from octoray.models.portable import load_portable
    from octoray.models.runs import run_dir

    model = CNV()
    if args.from_portable:
        state = load_portable(args.from_portable, model)
    else:
        state = torch.load(run_dir(args.run) / f"{args.checkpoint or 'best'}.pt", weights_only=False,
                           map_location="cpu")
        model.load_state_dict(state["model"])
    model.eval()
    real = [k for k in ("weights", "activations") if state["recipe"].get(k, "binary") != "binary"]
    if real:
        raise SystemExit(f"export: this run trained real {' and '.join(real)} (a staged recipe's first stage): "
                         "its binary model is not what it learned; train a binary run from it with --init-from")
    if state["recipe"].get("binarize_over", 0) > state["epoch"]:
        raise SystemExit(f"export: after epoch {state['epoch']} this run's weights were still partly real "
                         f"(--binarize-over {state['recipe']['binarize_over']}): export an epoch from "
                         f"{state['recipe']['binarize_over']} on")
    return model, state


def _real_stage_before(portable: Path | None, recipe: dict) -> list[dict] | None:
    """The history of the real-weight stage a binary stage started from, where its file
    (--init-from) lies beside the exported one: a staged recipe's curve shows both stages."""
    from octoray.models.portable import portable_metadata

    parent = portable.parent / recipe["init_from"] if portable and recipe.get("init_from") else None
    if parent is None or not parent.is_file():
        return None
    meta = portable_metadata(parent)
    return meta["history"] if meta.get("recipe", {}).get("weights") == "real" else None


@reports_file_errors(PROG)
def main(argv=None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.qonnx:
        return _export_qonnx(args)
    if args.data is None:
        p.error("the following arguments are required: --data")
    for given, name in ((args.model, "--model"), (args.qonnx_output, "--qonnx-output")):
        if given:
            p.error(f"{name} goes with --qonnx")

    import torch

    from octoray.models.data import class_balanced_split, load_training_set
    from octoray.models.runs import evaluate
    from octoray.models.train import plot_learning_curve

    model, state = _load_float(args)
    recipe = state["recipe"]

    images, labels, _ = load_training_set(args.data)
    _, val_idx = class_balanced_split(labels, recipe["val_per_class"], recipe["split_seed"])
    val_idx = val_idx[:args.limit]
    x_val, y_val = images[val_idx], labels[val_idx]
    float_acc, float_pred = evaluate(model, torch.from_numpy(x_val).permute(0, 3, 1, 2).contiguous(),
                                     torch.from_numpy(y_val))
    packed, thresholds = export(model)
    metadata = {
        "class_names": list(CLASS_NAMES),
        "input": "uint8 RGB 32x32 NHWC; x = 2p/255 - 1; q = clamp(round(128 x), -128, 127) (Q1.7)",
        "tie_break": "lowest class index among equal fc3 popcounts",
        "trained_epochs": state["epoch"],
        "recipe": recipe,
        "training_command": _training_command(recipe, state["history"][-1].get("device")),
        "validation": {"images": int(len(val_idx)), "split_seed": recipe["split_seed"],
                       "float_accuracy": round(float_acc, 4)},
        "exported": datetime.date.today().isoformat(),
    }
    if "averaged" in state:  # octoray.models.average: the mean of several epochs' weights
        first, last = state["averaged"]["epochs"]
        metadata["averaged"] = {**state["averaged"], "command": "python -m octoray.models.average --data "
                                f"cifar10-train.tar.gz --run {state['averaged']['run']} --epochs {first}-{last} "
                                "--save-portable FILE"}
    int_model = CnvModel(packed, thresholds, metadata)
    int_pred = np.concatenate([cnv_reference.classify(int_model, x_val[i:i + 100])
                               for i in range(0, len(x_val), 100)])
    agreement = float((int_pred == float_pred.numpy()).mean())
    int_acc = float((int_pred == y_val).mean())
    metadata["validation"].update({"integer_accuracy": round(int_acc, 4),
                                   "integer_float_agreement": agreement,
                                   "integer_accuracy_by_views": _accuracy_by_views(int_model, x_val, y_val)})
    int_model.save(args.out)
    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot_learning_curve(state["history"], args.plot, before=_real_stage_before(args.from_portable, recipe))
    by_views = metadata["validation"]["integer_accuracy_by_views"]
    print(f"epoch {state['epoch']}: float {float_acc:.4f}, integer {int_acc:.4f}, "
          f"agreement {agreement:.4f} -> {args.out} ({args.out.stat().st_size:,} bytes)")
    print("integer, by fclassify --views N: " + ", ".join(f"{n}: {a:.4f}" for n, a in by_views.items()))
    return 0 if agreement == 1.0 else 1


def _accuracy_by_views(model: CnvModel, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The integer model's accuracy as `fclassify --views N` labels, for every N: the CPU
    kernel (tested equal to the reference) on all the views at once."""
    from octoray.formats.cnv_views import MAX_VIEWS, views
    from octoray.kernels.cnv_cpu import PackedModel, fc3_popcounts

    scores = fc3_popcounts(PackedModel(model), views(images, MAX_VIEWS)).reshape(MAX_VIEWS, len(images), -1)
    return {str(n): round(float((scores[:n].sum(axis=0).argmax(axis=1) == labels).mean()), 4)
            for n in range(1, MAX_VIEWS + 1)}


class _Refused(Exception):
    """A one-line error for the user."""


def _tensor_norm(model):
    """The float model's TensorNorm as the QONNX graph carries it: export() negates fc3's
    weights when its scale is negative, so the logits' sign, the mean and the scale flip."""
    import torch

    from octoray.models.cnv import BN_EPS
    from octoray.models.qonnx_export import TensorNorm

    tn = model.tensor_norm
    with torch.no_grad():
        std = torch.sqrt(tn.running_var + BN_EPS).item()
    mean, weight, bias = tn.running_mean.item(), tn.weight.item(), tn.bias.item()
    return TensorNorm(mean=-mean if weight < 0 else mean, std=std, weight=abs(weight), bias=bias)


def _qonnx_source(args):
    """(integer model, TensorNorm or None, a description) of the model --qonnx writes."""
    if args.from_portable or args.checkpoint:
        if args.model:
            raise _Refused("--model and --from-portable/--checkpoint name two models: give one")
        try:
            import torch  # noqa: F401
        except ImportError:
            raise _Refused("reading a float model needs PyTorch: pip install '.[train]'") from None
        try:
            model, state = _load_float(args)
        except FileNotFoundError as error:
            raise _Refused(f"{error.filename}: no such file") from None
        except (OSError, KeyError, ValueError, RuntimeError) as error:
            raise _Refused(f"{args.from_portable or args.run}: {error}") from None
        packed, thresholds = export(model)
        meta = {"class_names": list(CLASS_NAMES), "recipe": state["recipe"], "trained_epochs": state["epoch"]}
        where = args.from_portable or f"run {args.run}, {args.checkpoint or 'best'} checkpoint"
        return CnvModel(packed, thresholds, meta), _tensor_norm(model), f"{where} (epoch {state['epoch']})"
    path = args.model or DEFAULT_PATH
    try:
        model = CnvModel.load(path)
    except ModelFormatError as error:
        raise _Refused(str(error)) from None
    epochs = model.metadata.get("trained_epochs")
    return model, None, f"{path.name}" + (f" (epoch {epochs} of its run)" if epochs else "")


def _validation_images(args, model: CnvModel) -> tuple[np.ndarray, np.ndarray]:
    """Up to --limit (default QONNX_CHECK_IMAGES) held-out images spread evenly over the split,
    which is ordered by class, and their true labels."""
    from octoray.models.data import class_balanced_split, decode_members, index_archive

    recipe = model.metadata.get("recipe", {})
    try:
        names, labels = index_archive(args.data)
    except (OSError, EOFError) as error:
        raise _Refused(f"{args.data}: {getattr(error, 'strerror', None) or error}") from None
    _, val = class_balanced_split(labels, recipe.get("val_per_class", 500), recipe.get("split_seed", 0))
    count = min(args.limit or QONNX_CHECK_IMAGES, len(val))
    chosen = val[np.unique(np.linspace(0, len(val) - 1, count).round().astype(np.int64))]
    return decode_members(args.data, [names[i] for i in chosen]), labels[chosen]


def _export_qonnx(args) -> int:
    """Write the QONNX graph only once its labels equal the CPU kernel's on every checked image."""
    from octoray.kernels import cnv_cpu
    from octoray.models import qonnx_export

    try:
        qonnx_export.require_extra()
        if not args.qonnx.parent.is_dir():  # before the work, not after it
            raise _Refused(f"{args.qonnx}: No such file or directory")
        model, tensor_norm, source = _qonnx_source(args)
        checks = [("synthetic", qonnx_export.synthetic_images(SYNTHETIC_IMAGES), None)]
        if args.data:
            checks.insert(0, ("validation", *_validation_images(args, model)))
        output = args.qonnx_output or "top1"
        try:
            graph = qonnx_export.build(model, tensor_norm, source, output)
        except ValueError as error:  # a TensorNorm that would reorder or merge the logits
            raise _Refused(str(error)) from None
        packed = cnv_cpu.PackedModel(model)
        report = []
        checked = "labels" if output == "top1" else "fc3 outputs (2p - 512)"
        for kind, images, truth in checks:
            got = qonnx_export.outputs(graph, images)
            if output == "top1":
                got, want = got[:, 0], cnv_cpu.classify(packed, images)
            else:
                want = 2 * cnv_cpu.fc3_popcounts(packed, images) - fan_in("fc3")
            wrong = int((got != want).reshape(len(images), -1).any(axis=1).sum())
            if wrong:
                raise _Refused(f"the graph's {checked} differ from the CPU kernel's on {wrong} "
                               f"of {len(images)} {kind} images; {args.qonnx} not written")
            labels = got if output == "top1" else got.argmax(axis=1)
            accuracy = "" if truth is None else f" ({100 * float((labels == truth).mean()):.2f} % correct)"
            report.append(f"all {len(images)} {kind} images{accuracy}")
        try:
            qonnx_export.save(graph, args.qonnx)
        except OSError as error:
            raise _Refused(f"{args.qonnx}: {error.strerror or error}") from None
    except (qonnx_export.MissingExtra, _Refused) as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 1
    print(f"{args.qonnx}: CNV-W1A1 from {source} as QONNX for FINN {qonnx_export.FINN_VERSION} "
          f"({args.qonnx.stat().st_size:,} bytes); {checked} equal to the CPU kernel's on " + " and ".join(report)
          + ("" if args.data else " (--data ARCHIVE adds validation images)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
