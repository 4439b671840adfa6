"""Exporting the model for FINN: `python -m octoray.models.export --qonnx FILE` writes a QONNX
graph that qonnx's own executor runs to fclassify's labels, image by image, and that qonnx's
cleanup and inference passes accept with the quantisers FINN's W1A1 flow expects.

Needs the `qonnx` extra (pip install '.[qonnx]'); the validation-image check also needs the
CIFAR-10 training archive (never stored in git).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from octoray.formats.cnv_input import PIXEL_TO_Q17
from octoray.formats.cnv_model import LAYERS, CnvModel, fan_in
from octoray.kernels import cnv_cpu, cnv_reference
from test_model import ARCHIVE, random_model

ROOT = Path(__file__).resolve().parent.parent
HAS_QONNX = all(importlib.util.find_spec(m) for m in ("qonnx", "onnx", "onnxruntime"))
needs_qonnx = pytest.mark.skipif(not HAS_QONNX, reason="needs the qonnx extra: pip install '.[qonnx]'")
needs_archive = pytest.mark.skipif(not ARCHIVE.exists(), reason=f"needs the CIFAR-10 training archive ({ARCHIVE})")


def export(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "octoray.models.export", *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, env=env)


@pytest.fixture(scope="module")
def shipped() -> CnvModel:
    return CnvModel.load()


@pytest.fixture(scope="module")
def graph_file(tmp_path_factory) -> Path:
    """The file a user gets from the export command (which checks it on validation images
    too when given the archive)."""
    path = tmp_path_factory.mktemp("qonnx") / "cnv_w1a1.onnx"
    data = ["--data", ARCHIVE, "--limit", "100"] if ARCHIVE.exists() else []
    result = export("--qonnx", path, *data)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "all 200 synthetic images" in result.stdout
    if data:
        assert "all 100 validation images (" in result.stdout and "% correct)" in result.stdout
    return path


@pytest.fixture(scope="module")
def graph(graph_file):
    from qonnx.core.modelwrapper import ModelWrapper

    return ModelWrapper(str(graph_file))


def execute(graph, images: np.ndarray) -> dict:
    """Every tensor of the graph run by qonnx on uint8 NHWC images (fed NCHW float32)."""
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.change_batchsize import ChangeBatchSize
    from qonnx.transformation.infer_shapes import InferShapes

    sized = graph.transform(ChangeBatchSize(len(images))).transform(InferShapes())
    x = images.transpose(0, 3, 1, 2).astype(np.float32)
    return execute_onnx(sized, {sized.graph.input[0].name: x}, return_full_exec_context=True)


# --- the labels -------------------------------------------------------------------------


@needs_qonnx
@needs_archive
def test_labels_equal_the_cpu_kernel_on_500_validation_images(graph, shipped):
    from octoray.models.data import class_balanced_split, decode_members, index_archive
    from octoray.models.qonnx_export import classify

    names, labels = index_archive(ARCHIVE)
    recipe = shipped.metadata["recipe"]
    _, val_idx = class_balanced_split(labels, recipe["val_per_class"], recipe["split_seed"])
    chosen = val_idx[::len(val_idx) // 500][:500]  # 50 of each class
    assert len(chosen) == 500 and np.bincount(labels[chosen]).min() == 50
    images = decode_members(ARCHIVE, [names[i] for i in chosen])
    got = classify(graph, images)
    expected = cnv_cpu.classify(cnv_cpu.PackedModel(shipped), images)
    assert got.dtype == np.int64 and got.shape == (500,)
    assert np.array_equal(got, expected), f"{int((got != expected).sum())} of 500 labels differ"
    # and it is the trained network: about its validation accuracy
    assert abs((got == labels[chosen]).mean() - shipped.metadata["validation"]["integer_accuracy"]) < 0.06


@needs_qonnx
def test_labels_equal_the_cpu_kernel_on_synthetic_images(graph, shipped):
    from octoray.models.qonnx_export import classify, synthetic_images

    images = synthetic_images(300, seed=7)
    got = classify(graph, images, batch=128)
    expected = cnv_cpu.classify(cnv_cpu.PackedModel(shipped), images)
    assert np.array_equal(got, expected)
    assert len(np.unique(expected)) >= 4  # a check spread over classes, not one answer


@needs_qonnx
@pytest.mark.parametrize("seed", [3, 4])
def test_every_class_score_equals_the_reference_on_random_models(seed):
    """Random weights and thresholds (some beyond the accumulator's range, so that channels
    never or always fire): fc3's ten dot products in the graph are 2p - 512 for the
    reference's popcounts p, which checks every layer's threshold, not just the winner."""
    from octoray.models.qonnx_export import build

    model = random_model(seed)
    rng = np.random.default_rng(seed)
    for name in LAYERS[:-1]:
        t = model.thresholds[name]
        k = fan_in(name) if name != "conv1" else 27 * 128
        t[:4] = [-k - 5, k + 5, 0, 1] if name == "conv1" else [0, k + 1, k + 7, -3]
    images = rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    context = execute(build(model), images)
    popcounts = cnv_reference.fc3_popcounts(model, images)
    assert np.array_equal(context["fc3_acc"], 2 * popcounts - 512)
    assert np.array_equal(context["global_out"][:, 0], cnv_reference.classify(model, images))


@needs_qonnx
@pytest.mark.parametrize("seed", [3, 6])
def test_a_popcounts_graph_ends_at_fc3_with_2p_minus_512_for_every_class(seed):
    """`output="popcounts"`: no TensorNorm, no TopK; the graph's output is fc3's ten dot
    products, which a FINN build turns into the popcounts the card returns."""
    from octoray.models.qonnx_export import build

    model = random_model(seed)
    graph = build(model, output="popcounts")
    assert graph.graph.node[-1].op_type == "MatMul" and graph.graph.node[-1].output[0] == "global_out"
    assert not [n.name for n in graph.graph.node if n.op_type == "TopK" or n.name.startswith("tensor_norm")]
    assert graph.get_tensor_shape("global_out") == [1, 10]
    images = np.random.default_rng(seed).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    got = execute(graph, images)["global_out"]
    assert np.array_equal(got, 2 * cnv_reference.fc3_popcounts(model, images) - 512)


@needs_qonnx
def test_the_export_command_writes_the_popcounts_graph_after_checking_every_output(tmp_path):
    from qonnx.core.modelwrapper import ModelWrapper

    path = tmp_path / "cnv_popcounts.onnx"
    result = export("--qonnx", path, "--qonnx-output", "popcounts")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "; fc3 outputs (2p - 512) equal to the CPU kernel's on all 200 synthetic images" in result.stdout
    graph = ModelWrapper(str(path))
    assert graph.get_tensor_shape("global_out") == [1, 10] and graph.graph.node[-1].op_type == "MatMul"
    alone = export("--qonnx-output", "popcounts", "--data", tmp_path)
    assert alone.returncode == 2 and "--qonnx-output goes with --qonnx" in alone.stderr


@needs_qonnx
def test_ties_go_to_the_lowest_class_as_in_every_kernel():
    """Equal fc3 rows give equal scores: TopK, like the kernels' argmax and FINN's LabelSelect
    (a strict > in label order), keeps the lowest index."""
    from octoray.models.qonnx_export import build, classify

    model = random_model(5)
    rows = model.weight_bits["fc3"]
    rows[:] = rows[6]
    rows[[2, 4]] = ~rows[6]  # classes 2 and 4 tie with each other, the rest with each other
    images = np.random.default_rng(5).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    got = classify(build(model), images)
    assert np.array_equal(got, cnv_reference.classify(model, images))
    assert set(got) <= {0, 2}


@needs_qonnx
def test_input_quantisation_is_the_kernels_q17_for_every_pixel_value(graph):
    pixels = (np.arange(32 * 32 * 3) % 256).astype(np.uint8).reshape(1, 32, 32, 3)
    q = execute(graph, pixels)["pixels_q17"][0].transpose(1, 2, 0) * 128  # back to NHWC
    assert np.array_equal(q, np.array(PIXEL_TO_Q17)[pixels[0]])


# --- what FINN reads --------------------------------------------------------------------


@needs_qonnx
def test_qonnx_cleanup_and_inference_passes_accept_the_file(graph_file, tmp_path, shipped):
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.fold_constants import FoldConstants
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes
    from qonnx.util.cleanup import cleanup

    from octoray.models.qonnx_export import classify, synthetic_images

    clean = tmp_path / "clean.onnx"
    cleanup(str(graph_file), out_file=str(clean))
    model = ModelWrapper(str(clean))
    for step in (InferShapes(), InferDataTypes(), FoldConstants(exclude_op_types=["Quant", "BipolarQuant"])):
        model = model.transform(step)
    assert model.check_all_tensor_shapes_specified()
    images = synthetic_images(40, seed=9)
    assert np.array_equal(classify(model, images), cnv_cpu.classify(cnv_cpu.PackedModel(shipped), images))


@needs_qonnx
def test_the_graph_has_the_quantisers_finn_expects_of_a_w1a1_network(graph):
    """FINN v0.10.1's ConvertQONNXtoFINN folds weight quantisers with scale 1 into bipolar
    weights and turns activation quantisers that follow a BatchNorm (or the input's
    Sub) into MultiThresholds; the input is UINT8 and the graph ends in TopK(1)."""
    from qonnx.core.datatype import DataType
    from qonnx.custom_op.registry import getCustomOp
    from qonnx.transformation.infer_datatypes import InferDataTypes

    model = graph.transform(InferDataTypes())
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Conv") == 6 and ops.count("MatMul") == 3 and ops.count("MaxPool") == 2
    assert ops.count("BatchNormalization") == 8 and ops.count("BipolarQuant") == 17 and ops.count("Quant") == 1
    weights = acts = 0
    for node in model.graph.node:
        if node.op_type in ("Quant", "BipolarQuant"):
            assert node.domain == "qonnx.custom_op.general"
        if node.op_type == "BipolarQuant":
            assert model.get_initializer(node.input[1]).tolist() == [1.0]
            w = model.get_initializer(node.input[0])
            if w is not None:  # a weight: +-1 already, into a Conv or MatMul
                weights += 1
                assert set(np.unique(w)) == {-1.0, 1.0}
                assert model.find_consumer(node.output[0]).op_type in ("Conv", "MatMul")
            else:  # an activation, right after a BatchNorm whose scale is positive
                acts += 1
                bn = model.find_producer(node.input[0])
                assert bn.op_type == "BatchNormalization"
                assert (model.get_initializer(bn.input[1]) > 0).all()
                assert model.get_tensor_datatype(node.output[0]) == DataType["BIPOLAR"]
        if node.op_type == "Quant":
            scale, zeropt, bits = (float(model.get_initializer(i)) for i in node.input[1:])
            assert (scale, zeropt, bits) == (2.0 ** -7, 0.0, 8.0)
            q = getCustomOp(node)
            assert (q.get_nodeattr("signed"), q.get_nodeattr("narrow"), q.get_nodeattr("rounding_mode")) == (1, 0, "ROUND")
            assert model.find_producer(node.input[0]).op_type == "Sub"
    assert (weights, acts) == (9, 8)
    inp, out = model.graph.input[0], model.graph.output[0]
    assert model.get_tensor_datatype(inp.name) == DataType["UINT8"]
    assert model.get_tensor_shape(inp.name) == [1, 3, 32, 32] and model.get_tensor_shape(out.name) == [1, 1]
    top = model.graph.node[-1]
    assert top.op_type == "TopK" and top.output[1] == out.name
    assert model.get_initializer(top.input[1]).tolist() == [1]
    assert {o.domain or "": o.version for o in model.model.opset_import}[""] == 13


# --- the command ------------------------------------------------------------------------


@needs_qonnx
def test_export_from_the_portable_state_gives_the_shipped_graph_with_its_tensor_norm(graph, tmp_path):
    """The float state folds to the shipped integer model, so its graph has the same weights
    and thresholds; it also carries the trained TensorNorm, whose logits are the float
    model's."""
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from torch_classify import DEFAULT_WEIGHTS
    from qonnx.core.modelwrapper import ModelWrapper

    from octoray.models.cnv import CNV
    from octoray.models.export import main
    from octoray.models.qonnx_export import synthetic_images
    from octoray.models.portable import load_portable

    out = tmp_path / "from_portable.onnx"
    assert main(["--qonnx", str(out), "--from-portable", str(DEFAULT_WEIGHTS)]) == 0
    other = ModelWrapper(str(out))
    for init in graph.graph.initializer:
        if not init.name.startswith("tensor_norm"):
            assert np.array_equal(graph.get_initializer(init.name), other.get_initializer(init.name)), init.name
    assert float(other.get_initializer("tensor_norm_weight")[0]) > 0
    float_model = CNV()
    load_portable(DEFAULT_WEIGHTS, float_model)
    float_model.eval()
    images = synthetic_images(16, seed=11)
    with torch.no_grad():
        logits = float_model(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    assert np.allclose(execute(other, images)["logits"], logits, atol=1e-4)


@needs_qonnx
def test_a_graph_that_disagrees_is_not_written(tmp_path, monkeypatch, capsys):
    from octoray.models import export, qonnx_export

    monkeypatch.setattr(qonnx_export, "outputs", lambda graph, images: np.full((len(images), 1), 9))
    out = tmp_path / "bad.onnx"
    assert export.main(["--qonnx", str(out)]) == 1
    assert not out.exists() and not list(tmp_path.iterdir())
    err = capsys.readouterr().err
    assert err.startswith("octoray-export: the graph's labels differ from the CPU kernel's on ")
    assert err.count("\n") == 1
    monkeypatch.setattr(qonnx_export, "outputs", lambda graph, images: np.zeros((len(images), 10)))
    assert export.main(["--qonnx", str(out), "--qonnx-output", "popcounts"]) == 1
    assert not out.exists()
    err = capsys.readouterr().err
    assert err.startswith("octoray-export: the graph's fc3 outputs (2p - 512) differ from the CPU kernel's on 200 "
                          "of 200 synthetic images; ")


@needs_qonnx
def test_an_unwritable_destination_is_one_line_on_stderr(tmp_path):
    result = export("--qonnx", tmp_path / "missing" / "cnv.onnx")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == f"octoray-export: {tmp_path / 'missing' / 'cnv.onnx'}: No such file or directory\n"


def test_without_the_extra_the_command_says_how_to_install_it(tmp_path):
    blocked = "import sys; sys.modules['qonnx'] = None; from octoray.models.export import main; sys.exit(main(sys.argv[1:]))"
    result = subprocess.run([sys.executable, "-c", blocked, "--qonnx", str(tmp_path / "x.onnx")],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 1 and not (tmp_path / "x.onnx").exists()
    assert result.stderr == ("octoray-export: the QONNX export needs qonnx: "
                             "pip install 'octoray[qonnx]' (or '.[qonnx]' in a checkout)\n")


@needs_qonnx
def test_a_model_file_that_is_not_one_is_refused(tmp_path):
    bogus = tmp_path / "model.npz"
    bogus.write_bytes(b"not a model")
    result = export("--qonnx", tmp_path / "x.onnx", "--model", bogus)
    assert result.returncode == 1 and result.stderr.startswith(f"octoray-export: {bogus}") and result.stderr.count("\n") == 1


@needs_qonnx
def test_the_shipped_model_exports_without_pytorch(tmp_path):
    """The extra is all the export needs: the integer model is written without PyTorch."""
    blocked = "import sys; sys.modules['torch'] = None; from octoray.models.export import main; sys.exit(main(sys.argv[1:]))"
    result = subprocess.run([sys.executable, "-c", blocked, "--qonnx", str(tmp_path / "x.onnx")],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert (tmp_path / "x.onnx").stat().st_size > 1_000_000
    blocked_float = [sys.executable, "-c", blocked, "--qonnx", str(tmp_path / "y.onnx"), "--checkpoint", "last"]
    result = subprocess.run(blocked_float, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 1
    assert result.stderr == "octoray-export: reading a float model needs PyTorch: pip install '.[train]'\n"
