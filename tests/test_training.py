"""Training resumes where it stopped; export folds a float model into identical integer predictions.

These need PyTorch (the `train` extra).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from octoray.formats.cnv_input import CLASS_NAMES  # noqa: E402
from octoray.kernels import cnv_reference  # noqa: E402
from octoray.models.cnv import CNV  # noqa: E402
from octoray.models.export import export  # noqa: E402
from octoray.formats.cnv_model import CnvModel  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_archive(tmp_path_factory) -> Path:
    """A CIFAR-shaped archive of random JPEGs: 12 per class."""
    from PIL import Image

    path = tmp_path_factory.mktemp("data") / "tiny.tar.gz"
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for name in CLASS_NAMES:
            for i in range(12):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG")
                info = tarfile.TarInfo(f"cifar10-train/{name}/{i:04d}.jpg")
                info.size = buf.tell()
                buf.seek(0)
                tar.addfile(info, buf)
    return path


def run_module(module: str, cache: Path, *argv: str) -> subprocess.CompletedProcess:
    """`python -m octoray.models.MODULE ARGV` with its checkpoints under `cache`, run in this
    process: its exit status and output as the command's.  PyTorch is imported once for the
    file instead of once a command (~3 s each); the tests that need a real process (a killed
    run, the command line itself, resume.sh) start one."""
    main = importlib.import_module(f"octoray.models.{module}").main
    out, err = io.StringIO(), io.StringIO()
    threads, cache_before = torch.get_num_threads(), os.environ.get("OCTORAY_CACHE")
    os.environ["OCTORAY_CACHE"] = str(cache)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                raise SystemExit(main(list(argv)))  # as `sys.exit(main())` ends the command
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
    finally:
        torch.set_num_threads(threads)
        if cache_before is None:
            del os.environ["OCTORAY_CACHE"]
        else:
            os.environ["OCTORAY_CACHE"] = cache_before
    return subprocess.CompletedProcess(argv, code, out.getvalue().encode(), err.getvalue().encode())


def train(archive: Path, cache: Path, *extra: str, wait=True, process=False):
    """Train run "t" on the archive: in this process, or with process=True (or wait=False, a
    Popen) as `python -m octoray.models.train`."""
    argv = ["--data", str(archive), "--run", "t", "--batch-size", "20", "--val-per-class", "2", "--threads", "1",
            *extra]
    if wait and not process:
        return run_module("train", cache, *argv)
    env = dict(os.environ, OCTORAY_CACHE=str(cache), PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "octoray.models.train", *argv]
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return subprocess.run(command, env=env, capture_output=True, timeout=300)


def checkpoint(cache: Path) -> dict:
    return torch.load(cache / "train" / "t" / "last.pt", weights_only=False)


def test_an_interrupted_run_resumes_and_follows_the_same_curve(tiny_archive, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert train(tiny_archive, whole, "--epochs", "3", process=True).returncode == 0  # the command itself
    first = train(tiny_archive, split, "--epochs", "3", "--max-epochs-this-run", "1")
    assert first.returncode == 0 and checkpoint(split)["epoch"] == 1
    second = train(tiny_archive, split, "--epochs", "3")
    assert second.returncode == 0 and b"resuming t after epoch 1" in second.stdout
    a, b = checkpoint(whole), checkpoint(split)
    assert [h["epoch"] for h in b["history"]] == [1, 2, 3]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert (tmp_path / "split" / "train" / "t" / "learning-curve.png").stat().st_size > 1000


def test_progress_says_where_a_run_stands_without_the_data(tiny_archive, tmp_path):
    assert train(tiny_archive, tmp_path, "--epochs", "3", "--max-epochs-this-run", "2").returncode == 0
    history = checkpoint(tmp_path)["history"]
    shown = run_module("train", tmp_path, "--run", "t", "--progress")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.decode().splitlines()
    assert lines[0].startswith("t: 2 of 3 epochs, lr ")
    assert lines[1].split()[:3] == ["1-2", f"{100 * history[0]['val_acc']:.2f}", f"{100 * history[1]['val_acc']:.2f}"]
    assert "; 1 epoch left, about " in lines[-1]
    missing = run_module("train", tmp_path, "--run", "nothing", "--progress")
    assert missing.returncode == 1 and b"no run nothing on this machine" in missing.stderr
    assert not (tmp_path / "train" / "nothing").exists()
    assert run_module("train", tmp_path, "--run", "t").returncode == 2  # training needs --data


def test_a_killed_run_resumes_from_its_last_checkpoint(tiny_archive, tmp_path):
    proc = train(tiny_archive, tmp_path, "--epochs", "200", wait=False)
    last = tmp_path / "train" / "t" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done = checkpoint(tmp_path)["epoch"]
    assert done >= 1
    again = train(tiny_archive, tmp_path, "--epochs", "200", "--max-epochs-this-run", "1")
    assert again.returncode == 0
    assert f"resuming t after epoch {done}".encode() in again.stdout
    assert checkpoint(tmp_path)["epoch"] == done + 1


def test_a_different_recipe_is_refused(tiny_archive, tmp_path):
    assert train(tiny_archive, tmp_path, "--epochs", "2", "--max-epochs-this-run", "1").returncode == 0
    refused = train(tiny_archive, tmp_path, "--epochs", "2", "--seed", "7")
    assert refused.returncode == 1 and b"choose another --run" in refused.stderr


def test_the_run_records_its_device(tiny_archive, tmp_path):
    assert train(tiny_archive, tmp_path, "--epochs", "1", "--device", "cpu").returncode == 0
    state = checkpoint(tmp_path)
    assert state["device_type"] == "cpu" and state["history"][-1]["device"] == "cpu"


def test_a_time_budget_shrinks_the_schedule_to_what_fits(tiny_archive, tmp_path):
    done = train(tiny_archive, tmp_path, "--epochs", "100000", "--minutes", "0.15", "--lr", "0.01")
    assert done.returncode == 0, done.stderr
    assert b"100000 epochs do not fit in 0.15 minutes" in done.stdout
    state = checkpoint(tmp_path)
    epochs = state["recipe"]["epochs"]
    assert 1 <= epochs < 100000 and state["epoch"] == epochs == len(state["history"])
    if epochs >= 5:  # the cosine ran to its (new) end
        assert state["history"][-1]["lr"] < 0.001


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_asking_for_a_missing_gpu_is_a_message(tiny_archive, tmp_path):
    refused = train(tiny_archive, tmp_path, "--epochs", "1", "--device", "cuda")
    assert refused.returncode == 1
    assert refused.stderr.decode().strip() == "train: --device cuda: PyTorch sees no CUDA GPU"


def randomised_float_model(seed: int, negative_tensor_norm: bool) -> CNV:
    """A CNV whose BatchNorms have random statistics, some scales negative or zero."""
    g = torch.Generator().manual_seed(seed)
    model = CNV()
    with torch.no_grad():
        for layer in (*model.convs, *model.fcs):
            layer.weight.uniform_(-1, 1, generator=g)
        for i, bn in enumerate((*model.conv_bns, *model.fc_bns)):
            n = bn.num_features
            k = 27 if i == 0 else None
            spread = 3.0 if k else 20.0
            bn.running_mean.copy_(torch.randn(n, generator=g) * spread)
            bn.running_var.copy_(torch.rand(n, generator=g) * spread**2 + 0.5)
            bn.weight.copy_(torch.randn(n, generator=g))
            bn.weight[0] = 0.0
            bn.bias.copy_(torch.randn(n, generator=g))
        model.tensor_norm.weight.fill_(-0.7 if negative_tensor_norm else 1.3)
        model.tensor_norm.running_var.fill_(50.0)
    return model.eval()


@pytest.mark.parametrize("ste", ["hardtanh", "approxsign"])
def test_sign_is_plus_one_at_zero_and_passes_gradients_inside_the_unit_window(ste):
    from octoray.models.cnv import binary_sign

    edges = torch.tensor([0.0, -0.0, 1.0, -1.0, 0.99999994, -0.99999994, 1.0000001, -1.0000001, 0.5, -3.0])
    x = torch.cat([edges, torch.randn(4000) * 1.5]).requires_grad_()
    grad = torch.randn_like(x)
    binary_sign(x, ste).backward(grad)
    value = x.detach()
    assert torch.equal(binary_sign(value, ste), torch.where(value >= 0, 1.0, -1.0))
    window = (value.abs() <= 1).float()
    expected = window if ste == "hardtanh" else (2 - 2 * value.abs()).clamp(min=0)
    assert torch.equal(x.grad, grad * expected)
    assert x.grad[:8].ne(0).tolist() == [True, True, ste == "hardtanh", ste == "hardtanh", True, True, False, False]


def plus_minus_one(*shape: int, generator: torch.Generator) -> torch.Tensor:
    """+-1 at random, channels-last as the trainer stores activations."""
    values = torch.randint(0, 2, shape, generator=generator).float().mul_(2).sub_(1)
    return values.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("portable", [False, True])
@pytest.mark.parametrize("cin, cout, side", [(64, 64, 30), (64, 128, 14), (128, 128, 12), (128, 256, 5),
                                             (256, 256, 3)])
def test_counting_sign_bits_gives_the_float_convolutions_sums(cin, cout, side, portable):
    import torch.nn.functional as F

    from octoray.models import _popcount_conv, popcount

    g = torch.Generator().manual_seed(cin + cout + side)
    x, weight = plus_minus_one(7, cin, side, side, generator=g), plus_minus_one(cout, cin, 3, 3, generator=g)
    assert popcount.usable(x, weight)
    expected = F.conv2d(x, weight)
    counted = popcount.conv_sums(x, weight)  # 7 images cut between the threads
    assert torch.equal(counted, expected) and counted.stride() == expected.stride()
    # each code path of the C kernel on its own, the AVX2 one where this CPU has it
    x_bits = popcount._sign_bits(x.permute(0, 2, 3, 1).numpy())
    w_bits = popcount._sign_bits(np.ascontiguousarray(weight.permute(0, 2, 3, 1).numpy()))
    out = np.full((7, side - 2, side - 2, cout), np.nan, dtype=np.float32)
    _popcount_conv.conv(x_bits, w_bits, out, side, side, cin // 64, 0, 7, portable)
    assert np.array_equal(out, expected.permute(0, 2, 3, 1).numpy())


def test_a_step_with_counted_convolutions_is_the_float_step_to_the_bit(monkeypatch):
    """The popcount forward is a speed-up only: two copies of a model, one counting and one
    convolving floats, stay equal to the bit through Adam steps (at Brevitas' high rate, so
    that weights change sign), and so do their evaluations."""
    import copy

    import torch.nn.functional as F

    from octoray.models import popcount
    from octoray.models.runs import augment

    counted = []
    monkeypatch.setattr(popcount, "conv_sums", lambda x, w, sums=popcount.conv_sums: counted.append(1) or sums(x, w))

    torch.manual_seed(0)
    counting = CNV().to(memory_format=torch.channels_last)
    floats = copy.deepcopy(counting)
    floats.count_popcounts(False)
    optimizers = [torch.optim.Adam(m.parameters(), lr=0.02) for m in (counting, floats)]
    images = torch.randint(0, 256, (150, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (150,))
    signs_before = [conv.weight.detach().sign() for conv in counting.convs]
    for step in range(3):
        x = augment(images[50 * step:50 * step + 50], torch.Generator().manual_seed(step))
        x = x.contiguous(memory_format=torch.channels_last)
        for model, optimizer in zip((counting, floats), optimizers):
            loss = F.cross_entropy(model(x), labels[50 * step:50 * step + 50])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            model.clip_weights()
    assert len(counted) == 3 * 5  # conv2-conv6 counted in each step of the counting model only
    for (name, a), b in zip(counting.state_dict().items(), floats.state_dict().values()):
        assert torch.equal(a, b), name
    assert any(not torch.equal(conv.weight.detach().sign(), before)
               for conv, before in zip(counting.convs, signs_before))  # the steps did flip weights
    counting.eval(), floats.eval()
    with torch.no_grad():
        assert torch.equal(counting(x), floats(x))


def test_bf16_gradients_of_a_counted_convolution_are_the_float_ones_rounded():
    """--conv-gradients bf16 changes only the backward pass: the same sums forward, and
    gradients within bfloat16's rounding (8 bits) of float32's, for the input and the weight."""
    from octoray.models import popcount

    torch.manual_seed(0)
    x = torch.randn(4, 64, 10, 10).sign().contiguous(memory_format=torch.channels_last)
    weight = torch.randn(32, 64, 3, 3).sign()
    grad = torch.randn(4, 32, 8, 8).contiguous(memory_format=torch.channels_last)
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        xs, ws = x.clone().requires_grad_(), weight.clone().requires_grad_()
        out = popcount.conv2d(xs, ws, dtype)
        out.backward(grad)
        results[dtype] = out.detach(), xs.grad, ws.grad
        assert xs.grad.dtype == ws.grad.dtype == torch.float32
    (out32, gx32, gw32), (out16, gx16, gw16) = results[torch.float32], results[torch.bfloat16]
    assert torch.equal(out32, out16)
    for exact, rounded in ((gx32, gx16), (gw32, gw16)):
        error = (exact - rounded).norm() / exact.norm()
        assert 0 < error < 2 ** -7  # rounded (so bfloat16 did compute it), and only that much


@pytest.mark.parametrize("weights, portable", [("binary", "cnv-w1a1-st2b-best.npz"), ("real", "cnv-w1a1-st1b-last.npz")])
def test_bf16_gradients_of_the_trained_model_point_where_float32_ones_do(weights, portable):
    """On the shipped model's float weights (the eighth schedule's binary stage), and on the
    real weights of the stage one it started from, every parameter's gradient, through all the layers the rounded ones pass on,
    stays within 2 % of float32's; the forward pass is the same."""
    import copy

    import torch.nn.functional as F

    from octoray.models.portable import load_portable
    from octoray.models.runs import augment

    torch.manual_seed(0)
    model = CNV(weights=weights).to(memory_format=torch.channels_last)
    load_portable(ROOT / "training" / portable, model)
    images = torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8)
    x = augment(images, torch.Generator().manual_seed(0)).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (50,))
    grads, outputs = [], []
    for dtype in (torch.float32, torch.bfloat16):
        copied = copy.deepcopy(model)
        copied.count_gradients_in(dtype)
        outputs.append(copied(x))
        F.cross_entropy(outputs[-1], labels).backward()
        grads.append({name: p.grad for name, p in copied.named_parameters()})
    assert torch.equal(*outputs)
    # tensor_norm.bias adds one number to every logit, which the softmax ignores: its gradient
    # is zero but for rounding, so no relative error of it means anything
    assert grads[0].pop("tensor_norm.bias").abs() < 1e-6
    for name, exact in grads[0].items():
        error = ((exact - grads[1][name]).norm() / exact.norm()).item()
        assert error < 0.02, (name, error)
    assert any((exact - grads[1][name]).abs().max() > 0 for name, exact in grads[0].items())


def test_a_run_with_bf16_gradients_records_them_and_trains(tiny_archive, tmp_path):
    """The recipe says bf16; on a CPU without AMX the run says it computes in float32."""
    from octoray.models import popcount

    result = train(tiny_archive, tmp_path, "--epochs", "1", "--conv-gradients", "bf16")
    assert result.returncode == 0, result.stderr.decode()
    assert checkpoint(tmp_path)["recipe"]["conv_gradients"] == "bf16"
    says_float = b"computes them in float32 here" in result.stdout
    assert says_float == (not popcount.bf16_is_native())
    again = train(tiny_archive, tmp_path, "--epochs", "2")  # float gradients: another recipe
    assert again.returncode == 1 and b"choose another --run" in again.stderr


@pytest.mark.parametrize("seed, negative", [(1, False), (2, True), (3, False)])
def test_export_gives_the_float_models_predictions(seed, negative):
    model = randomised_float_model(seed, negative)
    images = np.random.default_rng(seed).integers(0, 256, (150, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        float_logits = model(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    bits, thresholds = export(model)
    integer = CnvModel(bits, thresholds, {"class_names": list(CLASS_NAMES)})
    popcounts = cnv_reference.fc3_popcounts(integer, images)
    # same order of logits: the float logits are an increasing affine map of the popcounts
    assert (cnv_reference.classify(integer, images) == float_logits.argmax(1).numpy()).all()
    assert len(np.unique(cnv_reference.classify(integer, images))) > 1  # not a constant model
    order = np.argsort(popcounts, axis=1, kind="stable")
    assert (np.take_along_axis(float_logits.numpy(), order, 1)[:, 1:]
            >= np.take_along_axis(float_logits.numpy(), order, 1)[:, :-1]).all()


def test_training_moves_to_another_machine_through_a_portable_file(tiny_archive, tmp_path):
    here, there = tmp_path / "here", tmp_path / "there"
    assert train(tiny_archive, here, "--epochs", "3", "--max-epochs-this-run", "1").returncode == 0
    portable = tmp_path / "resume.npz"
    assert train(tiny_archive, here, "--save-portable", str(portable)).returncode == 0
    assert portable.stat().st_size < 6_000_000  # weights and Adam's second moment, fp16, compressed
    moved = train(tiny_archive, there, "--epochs", "3", "--resume-from", str(portable))
    assert moved.returncode == 0, moved.stderr
    assert b"resuming t after epoch 1 from" in moved.stdout and b"fresh optimizer" not in moved.stdout
    assert [h["epoch"] for h in checkpoint(there)["history"]] == [1, 2, 3]


def test_a_run_keeps_its_portable_state_and_best_epoch_current_after_every_epoch(tiny_archive, tmp_path):
    """train --keep-portable FILE (--keep-best FILE): after each epoch FILE holds what
    --save-portable (--checkpoint best) would write then, so a session cut off before it saves
    still leaves its newest epoch and the epoch that ships."""
    kept, saved = tmp_path / "kept.npz", tmp_path / "saved.npz"
    kept_best, saved_best = tmp_path / "kept-best.npz", tmp_path / "saved-best.npz"
    first = train(tiny_archive, tmp_path, "--epochs", "3", "--max-epochs-this-run", "2", "--keep-portable", str(kept),
                  "--keep-best", str(kept_best))
    assert first.returncode == 0, first.stderr
    assert train(tiny_archive, tmp_path, "--save-portable", str(saved)).returncode == 0
    assert train(tiny_archive, tmp_path, "--save-portable", str(saved_best), "--checkpoint", "best").returncode == 0
    for mine, theirs, epochs in ((kept, saved, {2}), (kept_best, saved_best, {1, 2})):
        with np.load(mine) as a, np.load(theirs) as b:
            assert json.loads(str(a["metadata"]))["epoch"] in epochs and sorted(a.files) == sorted(b.files)
            for key in a.files:
                assert np.array_equal(a[key], b[key]), key
    with np.load(kept_best) as best:
        assert not any(key.startswith("adam.") for key in best.files)  # weights only: what ships
    assert not list(tmp_path.glob("*.tmp"))  # written beside, then renamed


def test_a_portable_file_carries_adams_second_moment_and_the_random_stream(tiny_archive, tmp_path):
    from octoray.models.portable import load_portable

    assert train(tiny_archive, tmp_path, "--epochs", "2", "--max-epochs-this-run", "1").returncode == 0
    portable = tmp_path / "resume.npz"
    assert train(tiny_archive, tmp_path, "--save-portable", str(portable)).returncode == 0
    saved = checkpoint(tmp_path)
    model = CNV()
    optimizer = torch.optim.Adam(model.parameters())
    meta = load_portable(portable, model, optimizer)
    assert torch.equal(meta["generator"], saved["generator"])
    for index, moments in saved["optimizer"]["state"].items():
        restored = optimizer.state_dict()["state"][index]
        assert float(restored["step"]) == float(moments["step"])
        assert torch.allclose(restored["exp_avg_sq"], moments["exp_avg_sq"], rtol=2e-3, atol=1e-12)


def average(archive: Path, cache: Path, *extra: str):
    return run_module("average", cache, "--data", str(archive), "--run", "t", *extra)


def test_the_last_epochs_average_into_one_model_that_exports(tiny_archive, tmp_path):
    """train --keep-epochs-from keeps each later epoch; average folds epochs 2-3 into one model
    whose latent weights are their mean, with statistics measured anew, and export takes it."""
    from octoray.models.portable import load_portable

    ran = train(tiny_archive, tmp_path, "--epochs", "3", "--keep-epochs-from", "2")
    assert ran.returncode == 0, ran.stderr
    kept = sorted(p.name for p in (tmp_path / "train" / "t" / "epochs").iterdir())
    assert kept == ["epoch-2.pt", "epoch-3.pt"]
    out = tmp_path / "averaged.npz"
    done = average(tiny_archive, tmp_path, "--epochs", "3-3", "--epochs", "2-3", "--save-portable", str(out))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert lines[0].startswith("epochs 3-3 of t: validation ") and lines[1].startswith("epochs 2-3 of t: ")
    snapshots = [torch.load(tmp_path / "train" / "t" / "epochs" / f"epoch-{e}.pt", weights_only=False)["model"]
                 for e in (2, 3)]
    model = CNV()
    meta = load_portable(out, model)
    assert meta["epoch"] == 3 and meta["averaged"]["epochs"] == [2, 3] and meta["averaged"]["run"] == "t"
    for key, value in model.state_dict().items():
        if key.endswith("weight") and value.dim() > 1:  # latent weights: the mean (stored as fp16)
            mean = (snapshots[0][key] + snapshots[1][key]) / 2
            assert torch.allclose(value, mean, atol=1e-3), key
            assert torch.equal(value >= 0, mean >= 0), key  # fp16 keeps every sign
    first_bn = model.state_dict()["conv_bns.0.running_mean"]
    assert not torch.allclose(first_bn, (snapshots[0]["conv_bns.0.running_mean"]
                                         + snapshots[1]["conv_bns.0.running_mean"]) / 2)
    exported = export_command(tiny_archive, tmp_path / "elsewhere", tmp_path / "cnv.npz", "--from-portable", str(out))
    assert exported.returncode == 0, exported.stderr
    info = CnvModel.load(tmp_path / "cnv.npz").metadata
    assert info["averaged"]["epochs"] == [2, 3]
    assert "octoray.models.average" in info["averaged"]["command"] and "--epochs 2-3" in info["averaged"]["command"]
    assert info["validation"]["integer_float_agreement"] == 1.0


def test_a_real_weight_stage_averages_as_the_network_it_trained(tiny_archive, tmp_path, monkeypatch):
    """A staged recipe's first stage (--weights real) is averaged with its real weights in the
    forward pass: the statistics are measured on what that network computes, not on its
    weights binarised, which it never trained as."""
    from octoray.models.average import recalibrated, snapshots_mean
    from octoray.models.portable import load_portable
    from octoray.models.runs import load_split

    ran = train(tiny_archive, tmp_path, "--epochs", "2", "--weights", "real", "--keep-epochs-from", "2")
    assert ran.returncode == 0, ran.stderr
    out = tmp_path / "averaged.npz"
    done = average(tiny_archive, tmp_path, "--epochs", "2-2", "--save-portable", str(out))
    assert done.returncode == 0, done.stderr
    model = CNV(weights="real")
    assert load_portable(out, model)["recipe"]["weights"] == "real"
    recipe = checkpoint(tmp_path)["recipe"]
    split = argparse.Namespace(data=tiny_archive, val_per_class=recipe["val_per_class"], split_seed=recipe["split_seed"])
    x_train = load_split(split, torch.device("cpu"))[0]
    monkeypatch.setenv("OCTORAY_CACHE", str(tmp_path))
    mean = snapshots_mean("t", 2, 2)
    as_trained = recalibrated(mean, x_train, recipe["batch_size"], recipe=recipe)
    binarised = recalibrated(mean, x_train, recipe["batch_size"])
    assert not as_trained.convs[1].binarize and binarised.convs[1].binarize
    key = "conv_bns.1.running_mean"
    assert torch.allclose(model.state_dict()[key], as_trained.state_dict()[key], atol=1e-2)
    assert not torch.allclose(model.state_dict()[key], binarised.state_dict()[key], atol=1e-2)


@pytest.mark.parametrize("tool, prog, argv", [
    ("train", "train", ["--run", "t", "--epochs", "1"]),
    ("teacher", "teacher", ["--run", "t"]),
    ("average", "average", ["--run", "t", "--epochs", "1-2"]),
    ("export", "octoray-export", ["--from-portable", str(ROOT / "training" / "cnv-w1a1-st2-best.npz")]),
    ("binarize_cost", "binarize_cost", ["--from", str(ROOT / "training" / "cnv-w1a1-st1-last.npz")]),
])
def test_a_training_tool_names_the_archive_it_cannot_read(tmp_path, tool, prog, argv):
    missing = tmp_path / "no-such-archive.tar.gz"
    done = run_module(tool, tmp_path, "--data", str(missing), *argv)
    assert (done.returncode, done.stderr.decode()) == (1, f"{prog}: {missing}: No such file or directory\n")


@pytest.mark.parametrize("tool, prog, argv", [
    ("train", "train", ["--run", "t", "--epochs", "1", "--val-per-class", "2", "--init-from"]),
    ("export", "octoray-export", ["--from-portable"]),
    ("binarize_cost", "binarize_cost", ["--from"]),
])
def test_a_training_tool_names_the_weights_file_it_cannot_read(tiny_archive, tmp_path, tool, prog, argv):
    missing = tmp_path / "no-such-weights.npz"
    done = run_module(tool, tmp_path, "--data", str(tiny_archive), *argv, str(missing))
    assert (done.returncode, done.stderr.decode()) == (1, f"{prog}: {missing}: No such file or directory\n")


def test_averaging_an_epoch_that_was_not_kept_is_a_message(tiny_archive, tmp_path):
    assert train(tiny_archive, tmp_path, "--epochs", "2", "--keep-epochs-from", "2").returncode == 0
    refused = average(tiny_archive, tmp_path, "--epochs", "1-2")
    assert refused.returncode == 1
    assert b"no snapshot of epoch 1 (train --keep-epochs-from)" in refused.stderr and b"Traceback" not in refused.stderr


def test_frozen_norms_keep_their_statistics_while_the_rest_learns_at_a_constant_rate(tiny_archive, tmp_path):
    """--norms frozen trains in inference's normalisation: the running statistics of the model
    it starts from stay as they were, scales and weights move; --schedule constant holds the
    peak learning rate after the warm-up."""
    assert train(tiny_archive, tmp_path, "--epochs", "1").returncode == 0
    start = tmp_path / "start.npz"
    assert train(tiny_archive, tmp_path, "--save-portable", str(start)).returncode == 0
    ran = train(tiny_archive, tmp_path / "b", "--epochs", "2", "--lr", "0.003", "--warmup-epochs", "0.5",
                "--norms", "frozen", "--schedule", "constant", "--init-from", str(start))
    assert ran.returncode == 0, ran.stderr
    before, after = checkpoint(tmp_path)["model"], checkpoint(tmp_path / "b")
    assert after["recipe"]["norms"] == "frozen" and after["recipe"]["schedule"] == "constant"
    assert [h["lr"] for h in after["history"]] == [0.003, 0.003]
    for key in ("conv_bns.0.running_mean", "fc_bns.1.running_var", "tensor_norm.running_mean"):
        assert torch.equal(after["model"][key], before[key]), key
    assert not torch.equal(after["model"]["conv_bns.0.bias"], before["conv_bns.0.bias"])
    assert not torch.equal(after["model"]["convs.2.weight"], before["convs.2.weight"])


@pytest.mark.parametrize("pad", [4, 0])
def test_recalibration_measures_each_norm_over_the_training_batches(pad):
    """After recalibrate, conv1's BatchNorm holds the mean of its batch means over the
    images augmented as the run trained (its --crop-pad), batch by batch, whatever its running
    statistics were before; average's recalibrated takes that padding from the run's recipe."""
    from octoray.models.average import RECALIBRATION_SEED, recalibrate, recalibrated
    from octoray.models.runs import augment

    torch.manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    model = CNV()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    model.conv_bns[0].running_mean.fill_(5.0)
    recalibrate(model, images, batch_size=10, crop_pad=pad)
    generator = torch.Generator().manual_seed(RECALIBRATION_SEED)
    with torch.no_grad():
        means = [model.convs[0](model.quantize_input(augment(images[i:i + 10], generator, pad))).mean(dim=(0, 2, 3))
                 for i in range(0, 40, 10)]
    assert torch.allclose(model.conv_bns[0].running_mean, torch.stack(means).mean(0), atol=1e-5)
    assert not model.training and model.conv_bns[0].momentum == 0.1
    again = recalibrated(weights, images, 10, recipe={"crop_pad": pad})
    assert torch.allclose(again.conv_bns[0].running_mean, model.conv_bns[0].running_mean, atol=1e-5)
    other = recalibrated(weights, images, 10, recipe={"crop_pad": 4 - pad})
    assert not torch.allclose(other.conv_bns[0].running_mean, model.conv_bns[0].running_mean, atol=1e-3)


def test_a_new_recipe_starts_from_another_runs_weights(tiny_archive, tmp_path):
    assert train(tiny_archive, tmp_path, "--epochs", "1").returncode == 0
    portable = tmp_path / "start.npz"
    assert train(tiny_archive, tmp_path, "--save-portable", str(portable)).returncode == 0
    refused = train(tiny_archive, tmp_path / "b", "--epochs", "1", "--label-smoothing", "0.1",
                    "--resume-from", str(portable))
    assert refused.returncode == 1 and b"--init-from" in refused.stderr
    new = train(tiny_archive, tmp_path / "b", "--epochs", "1", "--label-smoothing", "0.1",
                "--ste", "approxsign", "--init-from", str(portable))
    assert new.returncode == 0, new.stderr
    state = checkpoint(tmp_path / "b")
    assert state["epoch"] == 1 and state["recipe"]["init_from"] == "start.npz"
    assert state["recipe"]["ste"] == "approxsign"


def saved_teacher(archive: Path, cache: Path, epochs: int, *extra: str, name: str = "teacher") -> Path:
    """Train a teacher (run `name`) on the archive for `epochs` (with the extra options) and
    save it as cache/<name>.npz."""
    base = ["--data", str(archive), "--run", name, "--batch-size", "20", "--val-per-class", "2",
            "--epochs", str(epochs)]
    trained = run_module("teacher", cache, *base, *extra)
    assert trained.returncode == 0, trained.stderr
    teacher = cache / f"{name}.npz"
    saved = run_module("teacher", cache, *base, "--save", str(teacher))
    assert saved.returncode == 0, saved.stderr
    return teacher


def test_a_student_learns_from_a_saved_teacher(tiny_archive, tmp_path):
    teacher = saved_teacher(tiny_archive, tmp_path, epochs=2)
    from octoray.models.teacher import load_teacher

    model, meta = load_teacher(teacher)
    assert meta["epochs"] == 2 and len(meta["history"]) == 2
    assert model(torch.zeros(4, 3, 32, 32, dtype=torch.uint8)).shape == (4, 10)
    student = train(tiny_archive, tmp_path, "--epochs", "1", "--teacher", str(teacher))
    assert student.returncode == 0, student.stderr
    assert checkpoint(tmp_path)["recipe"]["teacher"] == "teacher.npz"
    assert checkpoint(tmp_path)["recipe"]["kd_weight"] == 0.9


def test_an_earlier_stage_teaches_the_next(tiny_archive, tmp_path):
    """--teacher takes a stage-one portable file too: the real-weight network, as its recipe
    trained it, answers each batch (in float also where float teachers are made 8-bit)."""
    from octoray.models.portable import model_from_portable
    from octoray.models.teacher import load_teachers

    assert train(tiny_archive, tmp_path / "one", "--epochs", "1", "--weights", "real").returncode == 0
    stage_one = tmp_path / "stage-one.npz"
    assert train(tiny_archive, tmp_path / "one", "--save-portable", str(stage_one)).returncode == 0
    pixels = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    teacher = load_teachers([stage_one], 100, calibration=pixels)
    assert isinstance(teacher, CNV) and not teacher.training
    assert not any(layer.binarize for layer in (*teacher.convs, *teacher.fcs))
    with torch.no_grad():
        assert torch.equal(teacher(pixels), model_from_portable(stage_one)(pixels))
    student = train(tiny_archive, tmp_path / "two", "--epochs", "1", "--init-from", str(stage_one),
                    "--teacher", str(stage_one), "--teacher-precision", "int8")
    assert student.returncode == 0, student.stderr
    state = checkpoint(tmp_path / "two")
    assert (state["recipe"]["teacher"], state["recipe"]["weights"]) == ("stage-one.npz", "binary")


def test_a_wider_teacher_keeps_its_widths(tiny_archive, tmp_path):
    teacher = saved_teacher(tiny_archive, tmp_path, 1, "--widths", "8,16,24,40")
    from octoray.models.teacher import load_teacher

    model, meta = load_teacher(teacher)
    assert meta["widths"] == [8, 16, 24, 40] and model.head.in_features == 40
    other = run_module("teacher", tmp_path, "--data", str(tiny_archive), "--val-per-class", "2",
                       "--widths", "8,8,8,8")
    assert other.returncode == 1 and b"Traceback" not in other.stderr
    assert b"has widths (8, 16, 24, 40), not (8, 8, 8, 8)" in other.stderr
    bad = run_module("teacher", tmp_path, "--data", str(tiny_archive), "--widths", "8,x")
    assert bad.returncode == 2 and b"not a list of channel counts" in bad.stderr


def export_command(archive: Path, cache: Path, out: Path, *extra: str):
    return run_module("export", cache, "--data", str(archive), "--run", "t", "--out", str(out), *extra)


def test_a_run_made_elsewhere_exports_from_its_portable_file(tiny_archive, tmp_path):
    """A GPU run comes back as a portable file: exporting it gives the model its checkpoint gives."""
    assert train(tiny_archive, tmp_path, "--epochs", "1").returncode == 0
    portable = tmp_path / "gpu.npz"
    assert train(tiny_archive, tmp_path, "--save-portable", str(portable)).returncode == 0
    direct, moved = tmp_path / "direct.npz", tmp_path / "moved.npz"
    elsewhere = tmp_path / "empty-cache"  # no checkpoint there: only the file is read
    first = export_command(tiny_archive, tmp_path, direct, "--checkpoint", "last")
    second = export_command(tiny_archive, elsewhere, moved, "--from-portable", str(portable),
                            "--plot", str(tmp_path / "curve.png"))
    assert first.returncode == 0 and second.returncode == 0, (first.stderr, second.stderr)
    a, b = CnvModel.load(direct), CnvModel.load(moved)
    assert a.weight_bits.keys() == b.weight_bits.keys() and a.thresholds.keys() == b.thresholds.keys()
    for name in a.weight_bits:
        assert np.array_equal(a.weight_bits[name], b.weight_bits[name]), name
    for name in a.thresholds:
        assert np.array_equal(a.thresholds[name], b.thresholds[name]), name
    assert a.metadata["validation"] == b.metadata["validation"]
    assert (tmp_path / "curve.png").stat().st_size > 1000


def test_a_binary_stages_curve_starts_with_the_real_weight_stage_beside_it(tmp_path):
    """export --plot draws a staged recipe whole: the history of the real-weight stage the
    binary stage's --init-from names, where that file lies beside the exported one; a binary
    parent, or none, adds nothing."""
    from octoray.models.export import _real_stage_before
    from octoray.models.train import plot_learning_curve

    def portable(name: str, weights: str, epochs: int) -> Path:
        history = [{"epoch": e, "train_acc": 0.5, "val_acc": 0.4} for e in range(1, epochs + 1)]
        meta = {"recipe": {"weights": weights}, "epoch": epochs, "history": history}
        np.savez(tmp_path / name, metadata=np.array(json.dumps(meta)))
        return tmp_path / name

    real, binary = portable("st1.npz", "real", 3), portable("kd.npz", "binary", 2)
    assert _real_stage_before(tmp_path / "st2.npz", {"init_from": "st1.npz"}) == \
        [{"epoch": e, "train_acc": 0.5, "val_acc": 0.4} for e in (1, 2, 3)]
    assert _real_stage_before(tmp_path / "st2.npz", {"init_from": binary.name}) is None
    assert _real_stage_before(tmp_path / "st2.npz", {"init_from": "elsewhere.npz"}) is None
    assert _real_stage_before(tmp_path / "st2.npz", {"init_from": None}) is None
    assert _real_stage_before(None, {"init_from": real.name}) is None  # exported from a --run checkpoint
    plot_learning_curve([{"epoch": 1, "train_acc": 0.6, "val_acc": 0.5}], tmp_path / "curve.png",
                        before=_real_stage_before(tmp_path / "st2.npz", {"init_from": "st1.npz"}))
    assert (tmp_path / "curve.png").stat().st_size > 1000


def test_a_bank_keeps_the_teachers_exact_output_on_each_variant():
    from octoray.models import kd_bank
    from octoray.models.teacher import Teacher

    torch.manual_seed(0)
    teacher = Teacher((8, 8, 8, 8)).eval()
    images = torch.randint(0, 256, (30, 3, 32, 32), dtype=torch.uint8)
    bank = kd_bank.build(teacher, images, variants=3, seed=7, batch=7)
    assert bank.variants == 3 and bank.logits.shape == (30, 3, 10)
    assert len({(int(x), int(y), bool(f)) for x, y, f in zip(bank.dx.flatten(), bank.dy.flatten(),
                                                            bank.flip.flatten())}) > 30  # real variety
    again = kd_bank.build(teacher, images, variants=3, seed=7)
    assert torch.equal(bank.dx, again.dx) and torch.equal(bank.flip, again.flip)
    index = torch.tensor([4, 0, 29, 4, 17])
    x, taught = bank.sample(images, index, torch.Generator().manual_seed(1))
    with torch.no_grad():
        direct = teacher(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(taught, direct, atol=1e-2, rtol=1e-3)  # fp16 keeps ~3 digits
    plain = images[index].float()
    assert not torch.equal(x.float(), plain)  # cropped or flipped, not the stored images


def test_a_student_distils_from_a_bank_built_once(tiny_archive, tmp_path):
    teacher = saved_teacher(tiny_archive, tmp_path, epochs=1)
    first = train(tiny_archive, tmp_path, "--epochs", "2", "--max-epochs-this-run", "1", "--teacher", str(teacher),
                  "--kd-bank", "4")
    assert first.returncode == 0, first.stderr
    bank_file = tmp_path / "train" / "t" / "teacher-bank.pt"
    saved = torch.load(bank_file, weights_only=True)
    assert saved["logits"].shape == (100, 4, 10) and saved["made_for"]["teacher"] == "teacher.npz"
    built = bank_file.stat().st_mtime_ns
    second = train(tiny_archive, tmp_path, "--epochs", "2", "--teacher", str(teacher), "--kd-bank", "4")
    assert second.returncode == 0, second.stderr
    assert bank_file.stat().st_mtime_ns == built  # the resumed run reused it
    state = checkpoint(tmp_path)
    assert state["epoch"] == 2 and state["recipe"]["kd_bank"] == 4
    other = train(tiny_archive, tmp_path, "--epochs", "3", "--teacher", str(teacher), "--kd-bank", "2")
    assert other.returncode == 1 and b"choose another --run" in other.stderr
    assert bank_file.stat().st_mtime_ns == built  # a refused recipe leaves the run's bank alone


def test_an_int8_teacher_answers_as_the_float_one_and_the_same_each_time():
    """The quantized teacher's ranges come from the images it is given, so that a resumed run
    quantizes it to the same teacher; its answers stay close to the float teacher's; torch.ao's
    deprecation warnings stay inside."""
    import warnings

    from octoray.models.teacher import Teacher, quantized

    torch.manual_seed(0)
    teacher = Teacher((8, 16, 16, 16)).eval()
    images = torch.randint(0, 256, (200, 3, 32, 32), dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first, second = quantized(teacher, images), quantized(teacher, images)
        x = images[:50].contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            exact, once, again = teacher(x).softmax(1), first(x).softmax(1), second(x).softmax(1)
    assert torch.equal(once, again)
    assert not torch.equal(once, exact)  # really another network
    assert (once - exact).abs().sum(1).max() / 2 < 0.05  # total variation of each answer


def test_a_student_distils_from_an_int8_teacher_and_resumes_with_the_same_one(tiny_archive, tmp_path):
    """The seventh schedule's recipe: the 8-bit teacher labels mixup blends live; a resumed
    run gets the same teacher and the same blends back."""
    teacher = saved_teacher(tiny_archive, tmp_path, epochs=1)
    whole, split = tmp_path / "whole", tmp_path / "split"
    int8 = ("--teacher", str(teacher), "--teacher-precision", "int8", "--mixup")
    assert train(tiny_archive, whole, "--epochs", "2", *int8).returncode == 0
    first = train(tiny_archive, split, "--epochs", "2", "--max-epochs-this-run", "1", *int8)
    assert first.returncode == 0, first.stderr
    assert train(tiny_archive, split, "--epochs", "2", *int8).returncode == 0
    a, b = checkpoint(whole), checkpoint(split)
    assert a["recipe"]["teacher_precision"] == "int8" and a["recipe"]["mixup"] is True and b["epoch"] == 2
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    other = train(tiny_archive, split, "--epochs", "3", "--teacher", str(teacher))  # a float teacher now
    assert other.returncode == 1 and b"choose another --run" in other.stderr


@pytest.mark.parametrize("stage", ["weights", "activations"])
def test_a_staged_recipe_trains_a_real_stage_then_seeds_a_binary_run(tiny_archive, tmp_path, stage):
    """--weights real / --activations real (stage one) are never exported; their weights start
    a binary run (stage two) through --init-from."""
    first = train(tiny_archive, tmp_path, "--epochs", "1", f"--{stage}", "real")
    assert first.returncode == 0, first.stderr
    state = checkpoint(tmp_path)
    assert state["recipe"][stage] == "real"
    real, binary = CNV(**{stage: "real"}), CNV()
    for model in (real, binary):
        model.load_state_dict(state["model"])
        model.eval()
    pixels = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    assert not torch.equal(real(pixels), binary(pixels))  # the forward pass used the real weights
    assert all(layer.weight.abs().max() <= 1 for layer in (*real.convs, *real.fcs))  # still clipped
    refused = export_command(tiny_archive, tmp_path, tmp_path / "x.npz", "--checkpoint", "last")
    assert refused.returncode == 1 and f"real {stage}".encode() in refused.stderr
    assert b"Traceback" not in refused.stderr
    portable = tmp_path / "stage-one.npz"
    assert train(tiny_archive, tmp_path, "--save-portable", str(portable)).returncode == 0
    second = train(tiny_archive, tmp_path / "b", "--epochs", "1", "--init-from", str(portable))
    assert second.returncode == 0, second.stderr
    assert checkpoint(tmp_path / "b")["recipe"][stage] == "binary"
    assert train(tiny_archive, tmp_path, "--epochs", "2").returncode == 1  # stage one resumes only as itself


def test_blended_weights_run_from_the_real_to_the_binary_network_with_a_gradient_of_one():
    """blend_weights(s): the forward pass sees w + s (sign(w) - w): the real-weight network at
    0, the binary one at 1; the latent weights' gradient is what the blend's is (sign's
    straight-through), whatever s."""
    torch.manual_seed(0)
    pixels = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    blended, real, binary = CNV(), CNV(weights="real"), CNV()
    real.load_state_dict(blended.state_dict())
    binary.load_state_dict(blended.state_dict())
    for model in (blended, real, binary):
        model.eval()
    with torch.no_grad():
        blended.blend_weights(0.0)
        assert torch.equal(blended(pixels), real(pixels))
        blended.blend_weights(1.0)
        assert torch.equal(blended(pixels), binary(pixels))
        blended.blend_weights(0.5)
        assert not torch.equal(blended(pixels), binary(pixels))
    layer = blended.fcs[2]
    x = torch.randn(4, 512)
    (torch.nn.functional.linear(x, layer.binary_weight()) * torch.arange(10.0)).sum().backward()
    assert torch.allclose(layer.weight.grad, torch.arange(10.0)[:, None] * x.sum(0))


def test_magnitude_order_makes_the_largest_weights_binary_first_with_a_gradient_of_one():
    """blend_weights(s, "magnitude"): each layer's forward pass uses sign(w) for the share s
    of its weights largest in |w| and w itself for the others; the gradient is 1 throughout."""
    torch.manual_seed(0)
    model = CNV()
    model.blend_weights(0.25, "magnitude")
    for layer in (*model.convs, *model.fcs):
        w, used = layer.weight.detach(), layer.binary_weight().detach()
        binary = used.abs() == 1
        assert binary.sum() == round(0.25 * w.numel())
        assert w.abs()[binary].min() > w.abs()[~binary].max()  # the largest ones, none skipped
        assert torch.equal(used[binary], torch.sign(w[binary])) and torch.equal(used[~binary], w[~binary])
    layer = model.fcs[2]
    x = torch.randn(4, 512)
    (torch.nn.functional.linear(x, layer.binary_weight()) * torch.arange(10.0)).sum().backward()
    assert torch.allclose(layer.weight.grad, torch.arange(10.0)[:, None] * x.sum(0))
    model.blend_weights(1.0, "magnitude")
    assert torch.equal(model.fcs[0].binary_weight(), torch.sign(model.fcs[0].weight))
    model.blend_weights(0.0, "magnitude")
    assert torch.equal(model.fcs[0].binary_weight(), model.fcs[0].weight)
    with pytest.raises(ValueError):
        model.blend_weights(0.5, "random")


def test_magnitude_order_halves_the_real_weights_every_epoch(tiny_archive, tmp_path):
    """--binarize-order magnitude: half the weights binary from the first step, half of those
    still real made binary by each epoch's end, all binary from the end of epoch E."""
    from types import SimpleNamespace

    from octoray.models.train import binary_share

    args = SimpleNamespace(binarize_over=2, binarize_order="magnitude")
    shares = [binary_share(step, 10, args) for step in (0, 4, 9, 19, 25)]
    assert shares == pytest.approx([1 - 0.5 ** 1.1, 1 - 0.5 ** 1.5, 0.75, 1.0, 1.0])
    ran = train(tiny_archive, tmp_path, "--epochs", "3", "--binarize-over", "2", "--binarize-order", "magnitude")
    assert ran.returncode == 0, ran.stderr
    state = checkpoint(tmp_path)
    assert [h["binary_share"] for h in state["history"]] == [0.75, 1.0, 1.0]
    assert state["recipe"]["binarize_order"] == "magnitude"


def test_binarize_cost_measures_each_layer_and_each_order_against_the_real_model(tiny_archive, tmp_path):
    """python -m octoray.models.binarize_cost: a row for the real model, each layer made binary
    alone and each share in both orders; every layer binary is the same network whichever way
    it is reached. A model whose weights are binary already is refused."""
    from octoray.models.binarize_cost import accuracy_with, calibration_draw
    from octoray.models.portable import portable_recipe
    from octoray.models.runs import load_split

    assert train(tiny_archive, tmp_path, "--epochs", "1", "--weights", "real").returncode == 0
    real = tmp_path / "real.npz"
    assert train(tiny_archive, tmp_path, "--save-portable", str(real)).returncode == 0
    done = run_module("binarize_cost", tmp_path, "--data", str(tiny_archive), "--from", str(real), "--images", "40")
    assert done.returncode == 0, done.stderr
    rows = [line.rsplit(None, 2) for line in done.stdout.decode().splitlines()]
    assert [name for name, _, _ in rows] == ["real weights", *(f"layer {i} binary" for i in range(1, 10)),
                                             *(f"{order} {share}" for share in ("0.5", "0.75", "0.875", "0.95")
                                               for order in ("blend", "magnitude")), "all binary"]
    assert all(0 <= float(value) <= 100 and unit == "%" for _, value, unit in rows)
    recipe = portable_recipe(real)
    split = argparse.Namespace(data=tiny_archive, val_per_class=recipe["val_per_class"], split_seed=recipe["split_seed"])
    x_train, _, x_val, y_val = load_split(split, torch.device("cpu"))
    draw = calibration_draw(x_train, 40)
    every_layer = accuracy_with(real, draw, x_val, y_val, layers=range(9))
    assert accuracy_with(real, draw, x_val, y_val, share=1.0, order="magnitude") == every_layer
    assert f"{100 * accuracy_with(real, draw, x_val, y_val, share=1.0):.2f}" == rows[-1][1]
    binary = tmp_path / "binary.npz"
    assert train(tiny_archive, tmp_path / "b", "--epochs", "1").returncode == 0
    assert train(tiny_archive, tmp_path / "b", "--save-portable", str(binary)).returncode == 0
    refused = run_module("binarize_cost", tmp_path, "--data", str(tiny_archive), "--from", str(binary))
    assert refused.returncode == 1 and b"its weights are binary already" in refused.stderr


def test_binarize_over_anneals_the_share_over_its_epochs_and_ships_only_binary_ones(tiny_archive, tmp_path):
    """--binarize-over 2: the share of sign(w) rises by the step to 1 at the end of epoch 2;
    the best epoch is chosen among binary epochs only, and export refuses an earlier one."""
    from types import SimpleNamespace

    from octoray.models.train import binary_share

    args = SimpleNamespace(binarize_over=2, binarize_order="blend")
    assert [binary_share(step, 10, args) for step in (0, 9, 19, 25)] == [0.05, 0.5, 1.0, 1.0]
    assert binary_share(0, 10, SimpleNamespace(binarize_over=0, binarize_order="blend")) == 1.0
    first = train(tiny_archive, tmp_path, "--epochs", "3", "--binarize-over", "2", "--max-epochs-this-run", "1")
    assert first.returncode == 0, first.stderr
    assert not (tmp_path / "train" / "t" / "best.pt").exists()  # epoch 1 was half real
    refused = export_command(tiny_archive, tmp_path, tmp_path / "x.npz", "--checkpoint", "last")
    assert refused.returncode == 1 and b"still partly real" in refused.stderr
    rest = train(tiny_archive, tmp_path, "--epochs", "3", "--binarize-over", "2")
    assert rest.returncode == 0, rest.stderr
    state = checkpoint(tmp_path)
    assert [h["binary_share"] for h in state["history"]] == [0.5, 1.0, 1.0]
    assert state["recipe"]["binarize_over"] == 2
    best = torch.load(tmp_path / "train" / "t" / "best.pt", weights_only=False)
    assert best["epoch"] >= 2
    shipped = export_command(tiny_archive, tmp_path, tmp_path / "m.npz")
    assert shipped.returncode == 0, shipped.stderr
    assert "--binarize-over 2" in CnvModel.load(tmp_path / "m.npz").metadata["training_command"]
    assert train(tiny_archive, tmp_path, "--epochs", "3").returncode == 1  # another recipe


def test_a_guide_pulls_every_hidden_layer_towards_its_own_sums(tiny_archive, tmp_path):
    """--guide FILE (a real-weight first stage): the loss adds how far each hidden layer's
    normalised sums are from the guide's; zero for the guide itself, and a run with a heavy
    guide ends nearer it than the same run without; the recipe and a shipped model record it."""
    from octoray.models.portable import model_from_portable
    from octoray.models.train import guide_distance

    assert train(tiny_archive, tmp_path / "one", "--epochs", "1", "--weights", "real").returncode == 0
    stage_one = tmp_path / "stage-one.npz"
    assert train(tiny_archive, tmp_path / "one", "--save-portable", str(stage_one)).returncode == 0
    guide = model_from_portable(stage_one)
    assert not guide.training and all(not layer.binarize for layer in (*guide.convs, *guide.fcs))
    pixels = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    taps = []
    guide(pixels, taps)
    assert len(taps) == 8 and guide_distance(guide, pixels, taps) == 0  # six convolutions, two FC layers

    def distance_after(cache: Path, *extra: str) -> float:
        done = train(tiny_archive, cache, "--epochs", "4", "--lr", "0.02", "--init-from", str(stage_one), *extra)
        assert done.returncode == 0, done.stderr
        student = CNV()
        student.load_state_dict(checkpoint(cache)["model"])
        student.eval()
        taps = []
        with torch.no_grad():
            student(pixels, taps)
        return float(guide_distance(guide, pixels, taps))

    guided = distance_after(tmp_path / "guided", "--guide", str(stage_one), "--guide-weight", "50")
    assert guided < distance_after(tmp_path / "free")
    state = checkpoint(tmp_path / "guided")
    assert (state["recipe"]["guide"], state["recipe"]["guide_weight"]) == ("stage-one.npz", 50.0)
    assert checkpoint(tmp_path / "free")["recipe"]["guide_weight"] == 0.0
    shipped = export_command(tiny_archive, tmp_path / "guided", tmp_path / "m.npz")
    assert shipped.returncode == 0, shipped.stderr
    assert "--guide training/stage-one.npz --guide-weight 50.0" in CnvModel.load(
        tmp_path / "m.npz").metadata["training_command"]
    missing = train(tiny_archive, tmp_path / "x", "--epochs", "1", "--guide", str(tmp_path / "none.npz"))
    assert missing.returncode == 2 and b"train: --guide: " in missing.stderr and b"Traceback" not in missing.stderr


def test_the_command_a_shipped_model_records_is_one_train_accepts():
    """export writes the recipe as a train command into the model's metadata: switches such as
    --mixup are named when on and left out when off, and train parses the result as the recipe."""
    import shlex

    from octoray.models.export import _training_command
    from octoray.models.train_options import RECIPE_DEFAULTS, RECIPE_KEYS, parse_args

    defaults = vars(parse_args(["--data", "x"]))
    for mixup in (True, False):
        recipe = {**{k: defaults[k] for k in RECIPE_KEYS}, "teacher": "teacher2.npz", "mixup": mixup,
                  "teacher_precision": "int8", "init_from": "cnv-w1a1-st2-best.npz", "epochs": 300}
        command = _training_command(recipe, "cpu")
        assert ("--mixup" in command.split()) == mixup and "True" not in command and "False" not in command
        assert "--bop-" not in command and "--halve-every" not in command  # what an Adam, cosine run leaves unused
        argv = shlex.split(command)[3:]  # after "python -m octoray.models.train"
        parsed = vars(parse_args(argv))
        unused = ("teacher", "init_from", "bop_gamma", "bop_threshold", "halve_every")
        assert {k: parsed[k] for k in RECIPE_KEYS if k not in unused} == \
            {k: recipe[k] for k in RECIPE_KEYS if k not in unused}
    brevitas_bop = {**{k: defaults[k] for k in RECIPE_KEYS}, "optimizer": "bop", "bop_threshold": 0.1,
                    "schedule": "halving", "halve_every": 40, "loss": "squared-hinge"}
    parsed = vars(parse_args(shlex.split(_training_command(brevitas_bop, "cpu"))[3:]))
    assert {k: parsed[k] for k in RECIPE_KEYS} == brevitas_bop
    assert set(RECIPE_DEFAULTS) <= set(RECIPE_KEYS)


def _resume_script(tmp_path, sleep: bool):
    """training/resume.sh with a stand-in python that records each call (its pid first) and
    then sleeps (a trainer at work) or ends at once (a stage run to its end)."""
    seen = tmp_path / "calls"
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\n[ \"$1\" = -c ] && exit \"$NO_TORCH\"\necho \"$$ $@\" >> {seen}\n"
                      + ("case \"$*\" in *--save-portable*) exit 0;; esac\nexec sleep 30\n" if sleep else ""))
    python.chmod(0o755)
    env = dict(os.environ, PYTHON=str(python), PIDFILE=str(tmp_path / "pid"), LOG=str(tmp_path / "log"),
               NO_TORCH="0")
    return ["bash", str(Path(__file__).resolve().parents[1] / "training" / "resume.sh")], env, seen


def _calls(seen, count, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = seen.read_text().splitlines() if seen.exists() else []
        if len(lines) >= count:
            return [line.split() for line in lines]
        time.sleep(0.05)
    raise AssertionError(f"{count} calls expected, {seen} has {lines}")


def _nice(pid):
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def test_the_resume_script_starts_one_trainer_at_nice_19_and_stops_by_its_pid(tmp_path):
    """training/resume.sh, as each session starts the campaign: the open stage resumes from its
    committed state and keeps it current, everything runs at nice 19, a second start is refused
    while the first lives, and killing the pid in the pid file stops the trainer too."""
    ROOT = Path(__file__).resolve().parents[1]
    script, env, seen = _resume_script(tmp_path, sleep=True)
    bare = subprocess.run([*script, "start"], capture_output=True, env=dict(env, NO_TORCH="1"), timeout=30)
    assert (bare.returncode, bare.stderr) == (1, f"resume.sh: {env['PYTHON']} has no PyTorch: pip install -e "
                                                 f"'.[train]' first\n".encode())
    assert not (tmp_path / "pid").exists()
    started = subprocess.run([*script, "start"], capture_output=True, env=env, timeout=30)
    assert started.returncode == 0, started.stderr
    pid = int((tmp_path / "pid").read_text())
    try:
        [[trainer, *argv]] = _calls(seen, 1)
        # a trainer, or first the teacher its stages distil from where that is not trained yet
        assert argv[:2] in (["-m", "octoray.models.train"], ["-m", "octoray.models.teacher"])
        assert "--run" in argv and "--threads" in argv
        state = f"training/{argv[argv.index('--run') + 1]}-state.npz"
        assert argv[argv.index("--keep-portable") + 1] == state  # kept current after every epoch
        if (ROOT / state).exists():  # committed: a fresh machine resumes from it
            assert argv[-2:] == ["--resume-from", state]
        assert _nice(pid) == 19 and _nice(trainer) == 19
        again = subprocess.run([*script, "start"], capture_output=True, env=env, timeout=30)
        assert again.returncode == 1 and b"a trainer already runs: pid %d" % pid in again.stderr
    finally:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{trainer}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{trainer}").exists()  # the stage stopped with the pid in the file
    assert len(_calls(seen, 1)) == 1  # and no later stage started in its place
    assert subprocess.run([*script, "frobnicate"], capture_output=True, env=env).returncode == 2


def test_the_resume_script_runs_the_stages_left_in_order_each_from_the_last(tmp_path):
    """When a stage ends, its last epoch is saved where the next stage's --init-from reads it,
    and the next stage begins; the last stage ends the schedule."""
    script, env, seen = _resume_script(tmp_path, sleep=False)
    started = subprocess.run([*script, "start"], capture_output=True, env=env, timeout=30)
    assert started.returncode == 0, started.stderr
    pid = int((tmp_path / "pid").read_text())
    deadline = time.monotonic() + 20
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    everything = [argv for _, *argv in _calls(seen, 1)]
    calls = [argv for argv in everything if argv[1] == "octoray.models.train"]
    first = everything[:len(everything) - len(calls)]  # what the stages need first: a teacher, trained and saved
    assert all(argv[1] == "octoray.models.teacher" for argv in first) and everything[len(first):] == calls
    if first:
        assert "--keep-portable" in first[0] and "--save" in first[-1]
    runs = [argv for argv in calls if "--keep-portable" in argv]
    saves = [argv for argv in calls if "--save-portable" in argv]
    assert len(saves) == len(runs) - 1 and calls == [c for pair in zip(runs, saves) for c in pair] + runs[-1:]
    for run, save, following in zip(runs, saves, runs[1:]):
        name = run[run.index("--run") + 1]
        assert save[save.index("--run") + 1] == name
        assert save[save.index("--save-portable") + 1] == following[following.index("--init-from") + 1] \
            == f"training/{name}-last.npz"
    assert f"{runs[-1][runs[-1].index('--run') + 1]}-last.npz" not in " ".join(calls[-1])


def test_cutout_blacks_out_one_square_clipped_at_the_border():
    from octoray.models.runs import cutout

    images = torch.full((64, 3, 32, 32), 200, dtype=torch.uint8)
    out = cutout(images, 8, torch.Generator().manual_seed(0))
    holes = (out == 0).all(1)  # all three channels black
    assert ((out == 0) == holes[:, None]).all()  # a hole is black in every channel, nothing else is
    sizes = holes.sum((1, 2))
    assert sizes.max() == 64 and sizes.min() >= 16  # 8x8 inside; at least a quarter of it at a corner
    for hole in holes:
        rows, cols = hole.any(1).nonzero().flatten(), hole.any(0).nonzero().flatten()
        assert hole[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # one rectangle
    assert (images == 200).all()  # the input is left alone


@pytest.mark.parametrize("pad", [0, 2, 4])
def test_a_training_crop_moves_each_image_at_most_its_padding_and_may_mirror_it(pad):
    """--crop-pad: each augmented image is the original shifted by at most `pad` pixels each
    way (the uncovered border black) and mirrored or not; pad 0 keeps the whole image."""
    from octoray.models.runs import augment

    images = torch.randint(1, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    out = augment(images, torch.Generator().manual_seed(5), pad)
    assert out.shape == images.shape and out.dtype == torch.uint8
    shifts, mirrored = set(), 0
    for image, seen in zip(images, out):
        padded = torch.nn.functional.pad(image, (pad, pad, pad, pad))
        found = [(dy, dx, flip) for flip in (False, True) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                 if (padded[:, dy:dy + 32, dx:dx + 32].flip(2) if flip else padded[:, dy:dy + 32, dx:dx + 32])
                 .equal(seen)]
        assert len(found) == 1  # exactly one crop and mirroring of this image
        shifts.add(found[0][:2])
        mirrored += found[0][2]
    assert 16 < mirrored < 48  # about half of them mirrored
    assert len(shifts) == 1 if pad == 0 else len(shifts) > 5  # pad 0: every image whole


def test_mixup_blends_each_image_with_a_partner_of_the_batch():
    from octoray.models.runs import mixup

    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    mixed, partner, weight = mixup(images, torch.Generator().manual_seed(2))
    assert mixed.dtype == torch.uint8 and sorted(partner.tolist()) == list(range(16))
    assert ((weight >= 0) & (weight < 1)).all() and weight.std() > 0.1
    w = weight[:, None, None, None]
    expected = w * images.float() + (1 - w) * images[partner].float()
    assert (mixed.float() - expected).abs().max() <= 0.5


def test_a_student_trains_on_cutout_and_mixup_images_a_live_teacher_labels(tiny_archive, tmp_path):
    teacher = saved_teacher(tiny_archive, tmp_path, epochs=1)
    done = train(tiny_archive, tmp_path, "--epochs", "1", "--teacher", str(teacher), "--cutout", "16", "--mixup",
                 "--crop-pad", "2")
    assert done.returncode == 0, done.stderr
    recipe = checkpoint(tmp_path)["recipe"]
    assert recipe["cutout"] == 16 and recipe["mixup"] is True and recipe["crop_pad"] == 2
    for pad in ("0", "9"):  # the crop without padding is allowed; one larger than 8 is not
        banked = train(tiny_archive, tmp_path / pad, "--epochs", "1", "--teacher", str(teacher), "--kd-bank", "2",
                       "--crop-pad", pad)
        assert banked.returncode == 2
        assert banked.stderr.decode().splitlines()[-1].startswith(
            "train: --cutout, --mixup and --crop-pad" if pad == "0" else
            "octoray-train: error: argument --crop-pad: invalid choice: 9")
    banked = train(tiny_archive, tmp_path / "b", "--epochs", "1", "--teacher", str(teacher), "--kd-bank", "2",
                   "--mixup")
    assert banked.returncode == 2 and banked.stderr.decode().startswith("train: --cutout, --mixup and --crop-pad")


def test_cross_fitted_teachers_answer_each_image_they_never_trained_on(tiny_archive, tmp_path):
    """Two teachers, each holding one half of the training images out; the student asks, for
    each image, the one that never saw it."""
    from octoray.models.runs import folds
    from octoray.models.teacher import CrossFitted, load_teacher, load_teachers

    first = saved_teacher(tiny_archive, tmp_path, 1, "--fold", "1/2", name="t1")
    second = saved_teacher(tiny_archive, tmp_path, 1, "--fold", "2/2", name="t2")
    one, meta = load_teacher(first)
    two, _ = load_teacher(second)
    assert meta["fold"] == [1, 2] and "held_out_acc" in meta["history"][-1]
    examined = run_module("teacher", tmp_path, "--data", str(tiny_archive), "--val-per-class", "2",
                          "--examine", str(first))
    assert examined.returncode == 0, examined.stderr
    lines = examined.stdout.decode().splitlines()
    assert [line.split(": ")[1] for line in lines] == ["learnt", "held out", "validation"]
    assert lines[1].endswith("(50 images)") and lines[2].endswith("(20 images)")
    fold = folds(100, 2)
    assert sorted(fold.bincount().tolist()) == [50, 50] and fold.equal(folds(100, 2))  # fixed halves
    both = load_teachers([second, first], 100)  # in any order
    assert isinstance(both, CrossFitted)
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    index = torch.arange(8) * 12
    with torch.no_grad():
        answered = both(x, index)
        for i in range(8):
            own = one if fold[index[i]] == 0 else two  # fold 1/2 holds fold 0 out
            assert torch.allclose(answered[i], own(x[i:i + 1])[0], atol=1e-5)
    student = train(tiny_archive, tmp_path, "--epochs", "1", "--teacher", str(first), "--teacher", str(second),
                    "--cutout", "8")
    assert student.returncode == 0, student.stderr
    assert checkpoint(tmp_path)["recipe"]["teacher"] == "t1.npz+t2.npz"
    twice = train(tiny_archive, tmp_path / "x", "--epochs", "1", "--teacher", str(first), "--teacher", str(first))
    assert twice.returncode == 2 and b"folds 1/N .. N/N" in twice.stderr
    blended = train(tiny_archive, tmp_path / "y", "--epochs", "1", "--teacher", str(first), "--teacher",
                    str(second), "--mixup")
    assert blended.returncode == 2 and b"not with --kd-bank or --mixup" in blended.stderr


def test_teachers_that_hold_nothing_out_teach_as_one_ensemble(tiny_archive, tmp_path):
    """Several teachers trained alike (another seed each) answer as the mean of their
    probabilities, which teacher --examine --ensemble reports and train distils from."""
    from octoray.models.teacher import Ensemble, load_teacher, load_teachers

    first = saved_teacher(tiny_archive, tmp_path, 1, name="s1")
    second = saved_teacher(tiny_archive, tmp_path, 1, "--seed", "2", name="s2")
    one, _ = load_teacher(first)
    two, _ = load_teacher(second)
    both = load_teachers([first, second], 100)
    assert isinstance(both, Ensemble)
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        mean = (torch.softmax(one(x), 1) + torch.softmax(two(x), 1)) / 2
        assert not torch.allclose(torch.softmax(one(x), 1), mean, atol=1e-4)  # two different teachers
        assert torch.allclose(torch.softmax(both(x, torch.arange(8)), 1), mean, atol=1e-5)
    examined = run_module("teacher", tmp_path, "--data", str(tiny_archive), "--val-per-class", "2",
                          "--examine", str(first), "--examine", str(second), "--ensemble")
    assert examined.returncode == 0, examined.stderr
    together = [line for line in examined.stdout.decode().splitlines() if line.startswith("s1.npz+s2.npz: ")]
    assert [line.split(": ")[1] for line in together] == ["learnt", "validation"]
    assert together[1].endswith("with the flip averaged in") and "(20 images)" in together[1]
    student = train(tiny_archive, tmp_path, "--epochs", "1", "--teacher", str(first), "--teacher", str(second),
                    "--teacher-precision", "int8")
    assert student.returncode == 0, student.stderr
    assert checkpoint(tmp_path)["recipe"]["teacher"] == "s1.npz+s2.npz"
    fold = saved_teacher(tiny_archive, tmp_path, 1, "--fold", "1/2", name="f1")
    mixed = train(tiny_archive, tmp_path / "m", "--epochs", "1", "--teacher", str(first), "--teacher", str(fold))
    assert mixed.returncode == 2 and b"hold no fold out (an ensemble)" in mixed.stderr


def test_a_teacher_run_continues_on_a_fresh_machine_from_its_portable_state(tiny_archive, tmp_path):
    """teacher --keep-portable leaves the run's state after every epoch; another machine (an
    empty cache) continues from it with --resume-from much as this one continues from its own
    checkpoint (the file keeps the weights in fp16; SGD's momentum rebuilds itself)."""
    from octoray.models.teacher import load_teacher

    base = ["--data", str(tiny_archive), "--run", "t", "--batch-size", "20", "--val-per-class", "2"]
    state = tmp_path / "teacher-state.npz"
    first = run_module("teacher", tmp_path / "here", *base, "--epochs", "1", "--keep-portable", str(state))
    assert first.returncode == 0, first.stderr
    with np.load(state, allow_pickle=False) as z:
        assert json.loads(str(z["state"]))["epoch"] == 1 and any(k.startswith("model.") for k in z.files)
    saved = run_module("teacher", tmp_path / "here", *base, "--save-portable", str(tmp_path / "again.npz"))
    assert saved.returncode == 0 and (tmp_path / "again.npz").read_bytes() == state.read_bytes()
    here = run_module("teacher", tmp_path / "here", *base, "--epochs", "2")
    there = run_module("teacher", tmp_path / "there", *base, "--epochs", "2", "--resume-from", str(state))
    assert here.returncode == 0 and there.returncode == 0, there.stderr
    assert f"resuming t after epoch 1 from {state}" in there.stdout.decode()
    for cache, name in ((tmp_path / "here", "h.npz"), (tmp_path / "there", "t.npz")):
        assert run_module("teacher", cache, *base, "--save", str(tmp_path / name)).returncode == 0
    (a, meta_a), (b, meta_b) = load_teacher(tmp_path / "h.npz"), load_teacher(tmp_path / "t.npz")
    assert [h["epoch"] for h in meta_b["history"]] == [1, 2]
    assert meta_b["history"][1]["train_loss"] == pytest.approx(meta_a["history"][1]["train_loss"], rel=1e-2)
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        pa, pb = torch.softmax(a(x), 1), torch.softmax(b(x), 1)
    assert (pa - pb).abs().max() < 0.02 and pa.argmax(1).equal(pb.argmax(1))


def test_a_teacher_keeps_its_fold(tiny_archive, tmp_path):
    base = ["--data", str(tiny_archive), "--run", "f", "--batch-size", "20", "--val-per-class", "2", "--epochs", "1"]
    assert run_module("teacher", tmp_path, *base, "--fold", "1/2").returncode == 0
    other = run_module("teacher", tmp_path, *base, "--fold", "2/2")
    assert other.returncode == 1 and b"holds out fold 1/2, not 2/2" in other.stderr
    bad = run_module("teacher", tmp_path, *base, "--fold", "3/2")
    assert bad.returncode == 2 and b"is not a fold such as 1/2" in bad.stderr


def test_bop_flips_a_weight_only_when_its_gradient_keeps_asking_and_the_norms_learn_as_with_adam():
    """Bop (train --optimizer bop): binary weights stay +-1 and flip when the average of their
    gradient points their way, consistently enough against the average of its square; the other
    parameters take the steps torch's Adam takes."""
    from octoray.models.bop import Bop

    weight = torch.nn.Parameter(torch.tensor([1.0, 1.0, -1.0, -1.0]))
    scale, twin = torch.nn.Parameter(torch.tensor([0.5, -0.3])), torch.nn.Parameter(torch.tensor([0.5, -0.3]))
    bop = Bop([weight, scale], [weight], lr=0.01, gamma=0.1, threshold=0.5)
    adam = torch.optim.Adam([twin], lr=0.01)
    rng = torch.Generator().manual_seed(0)
    flipped_at = {}
    for step in range(1, 60):
        # weight 0: pushed down every step (flips); 1: pushed up (it is +1 already: stays);
        # 2: noise around zero (stays); 3: pushed down, the way it points (stays)
        noise = torch.randn((), generator=rng)
        weight.grad = torch.stack([torch.tensor(1.0), torch.tensor(-1.0), noise, torch.tensor(1.0)])
        scale.grad = twin.grad = torch.tensor([0.2, -0.1]) * step
        bop.step()
        adam.step()
        assert set(weight.detach().abs().tolist()) == {1.0}
        for i, w in enumerate(weight.detach().tolist()):
            if w != [1.0, 1.0, -1.0, -1.0][i]:
                flipped_at.setdefault(i, step)
    assert list(flipped_at) == [0] and weight.tolist() == [-1.0, 1.0, -1.0, -1.0]
    # not at once: both averages start at zero, so after k steps of one gradient
    # |m| / sqrt(v) = sqrt(1 - (1 - gamma)^k), which passes 0.5 at the third
    assert flipped_at[0] == 3
    assert bop.take_flips() == 1 and bop.take_flips() == 0
    assert torch.allclose(scale, twin, rtol=1e-6, atol=1e-7)


def test_a_bop_run_keeps_binary_weights_counts_its_flips_and_resumes_from_a_portable_file(tiny_archive, tmp_path):
    from octoray.models.bop import Bop
    from octoray.models.portable import load_portable

    here, there = tmp_path / "here", tmp_path / "there"
    bop = ("--optimizer", "bop", "--bop-gamma", "0.05", "--bop-threshold", "0.1")
    first = train(tiny_archive, here, "--epochs", "3", "--max-epochs-this-run", "2", *bop)
    assert first.returncode == 0, first.stderr
    state = checkpoint(here)
    assert state["recipe"]["optimizer"] == "bop" and state["recipe"]["bop_threshold"] == 0.1
    assert all(0 < h["flips"] < 1 for h in state["history"])
    model = CNV()
    model.load_state_dict(state["model"])
    for weight in model.binary_weights():
        assert set(weight.detach().abs().unique().tolist()) == {1.0}
    portable = tmp_path / "resume.npz"
    assert train(tiny_archive, here, "--save-portable", str(portable)).returncode == 0
    restored = Bop(model.parameters(), model.binary_weights(), lr=0.01, gamma=0.05, threshold=0.1)
    load_portable(portable, model, restored)
    for index, moments in state["optimizer"]["state"].items():
        mine = restored.state_dict()["state"][index]
        if "momentum" in moments:  # what decides a flip, m / sqrt(v), kept to 1/127 of its range
            rms = moments["square"].sqrt()
            assert torch.allclose(mine["square"].sqrt(), rms, rtol=2e-3, atol=float(rms.max()) * 1e-4)
            assert (mine["momentum"] - moments["momentum"]).abs().le(rms / 127 + 1e-12).all()
        else:
            big = float(moments["exp_avg_sq"].max())
            assert torch.allclose(mine["exp_avg_sq"], moments["exp_avg_sq"], rtol=2e-2, atol=max(big * 1e-3, 1e-12))
    moved = train(tiny_archive, there, "--epochs", "3", "--resume-from", str(portable), *bop)
    assert moved.returncode == 0, moved.stderr
    assert b"fresh optimizer" not in moved.stdout and len(checkpoint(there)["history"]) == 3
    refused = train(tiny_archive, tmp_path / "x", "--epochs", "1", "--weights", "real", *bop)
    assert refused.returncode == 2 and b"--optimizer bop" in refused.stderr


def test_brevitas_recipe_halves_the_rate_every_forty_epochs_and_scores_a_squared_hinge(tiny_archive, tmp_path):
    """--schedule halving --halve-every E and --loss squared-hinge: Brevitas' bnn_pynq recipe
    (Adam at 0.02 halved every 40 epochs, the mean squared hinge against +-1 targets)."""
    from octoray.models.train import learning_rate, squared_hinge
    from octoray.models.train_options import parse_args

    args = parse_args(["--data", "x", "--lr", "0.02", "--schedule", "halving", "--warmup-epochs", "0"])
    assert [learning_rate(epoch * 450, 450, args) for epoch in (0, 39, 40, 79, 80, 400)] == \
        [0.002, 0.02, 0.01, 0.01, 0.005, 0.02 / 1024]
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, -3.0, 1.5]])
    # image 0, label 0: (1-2)+ = 0, (1+0.5)^2 = 2.25, (1-1)+ = 0; image 1, label 2: 1, 0, 0
    assert squared_hinge(logits, torch.tensor([0, 2])).item() == pytest.approx((2.25 + 1.0) / 6)
    run = train(tiny_archive, tmp_path, "--epochs", "2", "--loss", "squared-hinge", "--schedule", "halving",
                "--halve-every", "1", "--lr", "0.02", "--warmup-epochs", "0")
    assert run.returncode == 0, run.stderr
    state = checkpoint(tmp_path)
    assert (state["recipe"]["loss"], state["recipe"]["halve_every"]) == ("squared-hinge", 1)
    assert [h["lr"] for h in state["history"]] == [0.02, 0.01]
    refused = train(tiny_archive, tmp_path / "x", "--epochs", "1", "--loss", "squared-hinge", "--mixup")
    assert refused.returncode == 2 and b"--loss squared-hinge" in refused.stderr


def test_weight_decay_pulls_only_the_binarising_weights_towards_zero_as_adams_own(tiny_archive, tmp_path):
    """--weight-decay L2 (Liu et al. 2021's stage with real weights): Adam's coupled decay on the
    convolutions' and dense layers' weights, none on the norms; one optimizer group, so the run
    moves through a portable file as any other; refused with Bop."""
    from octoray.models.cnv import CNV
    from octoray.models.train import decay_weights

    torch.manual_seed(0)
    model = CNV(weights="real")
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    decay_weights(model, 0.5)
    binarising = {id(w) for w in model.binary_weights()}
    for name, p in model.named_parameters():
        expected = 0.5 * p.detach() if id(p) in binarising else torch.zeros_like(p)
        assert torch.equal(p.grad, expected), name
    # the same as torch's Adam(weight_decay=) on a binarising weight, step for step
    weight = model.convs[1].weight
    ours, theirs = weight.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    a, b = torch.optim.Adam([ours], lr=0.01), torch.optim.Adam([theirs], lr=0.01, weight_decay=0.5)
    for _ in range(3):
        g = torch.randn_like(ours)
        ours.grad, theirs.grad = g.clone() + 0.5 * ours.detach(), g.clone()
        a.step()
        b.step()
    assert torch.allclose(ours, theirs)

    run = train(tiny_archive, tmp_path, "--epochs", "2", "--weights", "real", "--weight-decay", "5e-6",
                "--max-epochs-this-run", "1")
    assert run.returncode == 0, run.stderr
    assert checkpoint(tmp_path)["recipe"]["weight_decay"] == 5e-6
    portable = tmp_path / "state.npz"
    assert run_module("train", tmp_path, "--run", "t", "--save-portable", str(portable)).returncode == 0
    moved = train(tiny_archive, tmp_path / "elsewhere", "--epochs", "2", "--weights", "real",
                  "--weight-decay", "5e-6", "--resume-from", str(portable))
    assert moved.returncode == 0, moved.stderr
    assert checkpoint(tmp_path / "elsewhere")["epoch"] == 2
    other = train(tiny_archive, tmp_path, "--epochs", "2", "--weights", "real")
    assert other.returncode != 0 and b"weight_decay" in other.stderr  # a different recipe
    refused = train(tiny_archive, tmp_path / "bop", "--epochs", "1", "--optimizer", "bop", "--weight-decay", "1e-5")
    assert refused.returncode == 2 and b"--weight-decay" in refused.stderr
