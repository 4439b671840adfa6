"""A training run as one small file that carries it to another machine (the portable state
a fresh machine resumes from, committed to the repository) or that a shipped model folds from.

fp16 weights that keep their fp32 signs, Adam's second moment (Bop's gradient averages for
its binary weights), the random stream and the run's metadata, in one compressed .npz of a
few MiB (the repository keeps files under 5 MiB).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from octoray.models.cnv import CNV

PORTABLE_EXTRAS = ("averaged",)  # metadata a portable file carries where a state has it (average.py)


def _half_keeping_sign(value: torch.Tensor) -> torch.Tensor:
    """fp16 latent weights whose sign (the binary weight) is the fp32 one: a tiny negative
    weight would round to -0.0, which binarises to +1 (one such conv1 weight changed 11 % of
    the labels of the epoch-33 file)."""
    half = value.half()
    lost = (half == 0) & (value < 0)
    half[lost] = -torch.finfo(torch.float16).smallest_normal / 1024  # the smallest subnormal
    return half


def _bop_arrays(name: str, momentum: torch.Tensor, square: torch.Tensor) -> dict[str, np.ndarray]:
    """Bop's two averages for one weight tensor in under two bytes a weight, so the file stays
    under 5 MiB: the root of the squared gradient's average in fp16 (relative to its largest,
    which fp16's range then holds) and what decides a flip, m / sqrt(v) in [-1, 1], in int8
    (steps of 1/127 against thresholds of ~0.1)."""
    rms = square.sqrt()
    scale = float(rms.max()) or 1.0
    consistency = torch.where(rms > 0, momentum / rms, torch.zeros_like(momentum)).clamp_(-1, 1)
    return {f"bop.consistency.{name}": consistency.mul(127).round_().to(torch.int8).numpy(),
            f"bop.rms.{name}": (rms / scale).half().numpy(), f"bop.rms_scale.{name}": np.array(scale)}


def save_portable(last: Path, path: Path) -> None:
    """The checkpoint as one small compressed file, so a run continues on a fresh machine nearly
    as it would here: fp16 weights (each keeping its sign), Adam's second moment as its square
    root in fp16 (which fp16 can hold) and step counts, the random generator and the history.
    Adam's first moment is left out (half the file): it rebuilds itself within ~10 steps,
    where a lost second moment would make the first few hundred steps far too large."""
    write_portable(torch.load(last, weights_only=False, map_location="cpu"), path)


def write_portable(state: dict, path: Path) -> None:
    """A checkpoint's state (weights, and the optimizer and random state where it has them) as
    save_portable's file; keys of its metadata beyond the recipe, epoch and history (such as
    what an averaged model was averaged over) travel with it."""
    arrays = {}
    for key, value in state["model"].items():
        value = value.detach().cpu()
        arrays[key] = (_half_keeping_sign(value) if value.is_floating_point() and value.dim() > 1 else value).numpy()
    params = [name for name, _ in CNV().named_parameters()]  # the optimizer's order
    optimizer = state.get("optimizer")
    if optimizer is not None:
        for index, moments in optimizer["state"].items():
            name = params[index]
            arrays[f"adam.step.{name}"] = np.array(float(moments["step"]))
            if "momentum" in moments:  # a binary weight under Bop: its gradient's averages decide flips
                arrays.update(_bop_arrays(name, moments["momentum"].cpu(), moments["square"].cpu()))
            else:
                arrays[f"adam.sqrt_v.{name}"] = moments["exp_avg_sq"].sqrt().half().cpu().numpy()
    if "generator" in state:
        arrays["generator"] = state["generator"].cpu().numpy()
    meta = {k: state[k] for k in ("recipe", "epoch", "history", *PORTABLE_EXTRAS) if k in state}
    meta["device_type"] = state.get("device_type", "cpu")
    tmp = path.with_name(path.name + ".tmp")  # replaced whole: a reader never sees half a file
    with open(tmp, "wb") as f:
        np.savez_compressed(f, metadata=np.array(json.dumps(meta)), **arrays)
    os.replace(tmp, path)


def load_portable(path: Path, model: CNV, optimizer=None) -> dict:
    """Load a save_portable file into the model (and, when the file has them, Adam's moments
    into the optimizer); returns its metadata, with "generator" when the file holds one."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["metadata"]))
        arrays = {k: z[k] for k in z.files if k != "metadata"}
    as_tensor = lambda a: torch.from_numpy(a.astype(np.float32) if a.dtype == np.float16 else a)  # noqa: E731
    model.load_state_dict({k: as_tensor(v) for k, v in arrays.items()
                           if not k.startswith(("adam.", "bop.")) and k != "generator"})
    if optimizer is not None and any(k.startswith("adam.") for k in arrays):
        state = optimizer.state_dict()
        params = [n for n, _ in model.named_parameters()]
        for index, name in enumerate(params):
            step = torch.tensor(float(arrays[f"adam.step.{name}"]))
            if f"bop.consistency.{name}" in arrays:
                rms = as_tensor(arrays[f"bop.rms.{name}"]) * float(arrays[f"bop.rms_scale.{name}"])
                momentum = torch.from_numpy(arrays[f"bop.consistency.{name}"]).float().div_(127).mul_(rms)
                state["state"][index] = {"step": step, "momentum": momentum, "square": rms.square()}
                continue
            state["state"][index] = {
                "step": step, "exp_avg": torch.zeros_like(model.get_parameter(name), device="cpu"),
                "exp_avg_sq": as_tensor(arrays[f"adam.sqrt_v.{name}"]).square()}
        optimizer.load_state_dict(state)
        meta["optimizer"] = True
    if "generator" in arrays:
        meta["generator"] = torch.from_numpy(arrays["generator"])
    return meta


def portable_metadata(path: Path) -> dict:
    """A portable file's metadata (recipe, epoch, history) without its weights."""
    with np.load(path, allow_pickle=False) as z:
        return json.loads(str(z["metadata"]))


def portable_recipe(path: Path) -> dict:
    """The recipe a portable file's run was trained with (its split included)."""
    return portable_metadata(path).get("recipe", {})


def model_from_portable(path: Path) -> CNV:
    """The network a portable file holds, built as its recipe trained it (real weights for a
    staged recipe's first stage), in evaluation mode: a fixed guide for another run."""
    model = CNV.trained_as(portable_recipe(path))
    load_portable(path, model)
    return model.eval()
