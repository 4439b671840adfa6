"""The shipped CNV-W1A1 model file, its integer folding and the numpy reference forward pass."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from octoray.formats.cnv_input import CLASS_NAMES, PIXEL_TO_Q17
from octoray.formats.cnv_model import DEFAULT_PATH, LAYERS, CnvModel, ModelFormatError, fan_in, fan_out
from octoray.kernels import cnv_reference

ROOT = Path(__file__).resolve().parent.parent
ARCHIVE = Path(os.environ.get("OCTORAY_CIFAR_ARCHIVE", ROOT.parent / "shared" / "data" / "cifar10-train.tar.gz"))


@pytest.fixture(scope="module")
def shipped() -> CnvModel:
    return CnvModel.load()


def test_input_quantisation_is_q17_of_2p_over_255_minus_1():
    expected = [max(-128, min(127, round(128 * (2 * p / 255 - 1)))) for p in range(256)]
    assert list(PIXEL_TO_Q17) == expected
    assert PIXEL_TO_Q17[0] == -128 and PIXEL_TO_Q17[255] == 127


def test_shipped_file_is_small_and_loads_without_pickle():
    size = DEFAULT_PATH.stat().st_size
    assert 100_000 < size < 1_000_000
    with np.load(DEFAULT_PATH, allow_pickle=False) as z:
        assert all(z[name].dtype != object for name in z.files)
    with zipfile.ZipFile(DEFAULT_PATH) as zf:
        assert not any(name.endswith(".pkl") for name in zf.namelist())


def test_shapes_thresholds_and_metadata(shipped):
    for name in LAYERS:
        assert shipped.weight_bits[name].shape == (fan_out(name), (fan_in(name) + 7) // 8)
        if name == "fc3":
            continue
        t = shipped.thresholds[name]
        if name == "conv1":
            assert (t >= -128 * 27).all() and (t <= 127 * 27 + 1).all()
        else:  # a popcount threshold: 0 fires always, K+1 never
            assert (t >= 0).all() and (t <= fan_in(name) + 1).all()
    meta = shipped.metadata
    assert meta["class_names"] == list(CLASS_NAMES)
    assert "Q1.7" in meta["input"] and "lowest class index" in meta["tie_break"]
    validation = meta["validation"]
    assert validation["images"] == 5000 and validation["integer_float_agreement"] == 1.0
    assert validation["integer_accuracy"] == validation["float_accuracy"]
    assert "octoray.models.train" in meta["training_command"]


def test_readme_reports_the_shipped_accuracy(shipped):
    accuracy = shipped.metadata["validation"]["integer_accuracy"]
    assert f"{100 * accuracy:.2f} %" in (ROOT / "README.md").read_text()


def test_readme_reports_the_accuracy_of_fclassifys_default_views(shipped):
    from octoray.formats.cnv_views import DEFAULT_VIEWS, MAX_VIEWS

    validation = shipped.metadata["validation"]
    by_views = validation["integer_accuracy_by_views"]
    assert sorted(map(int, by_views)) == list(range(1, MAX_VIEWS + 1))
    assert by_views["1"] == validation["integer_accuracy"]
    assert f"{100 * by_views[str(DEFAULT_VIEWS)]:.2f} %" in (ROOT / "README.md").read_text()


def test_packed_bits_are_little_endian_rows(shipped):
    w = shipped.weights_pm1("fc1")
    assert set(np.unique(w)) <= {-1, 1}
    repacked = np.packbits(w > 0, axis=1, bitorder="little")
    assert (repacked == shipped.weight_bits["fc1"]).all()


def test_a_corrupt_or_foreign_file_is_refused(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, metadata=np.array(json.dumps({"format": "something else", "version": 1})))
    with pytest.raises(ModelFormatError):
        CnvModel.load(bad)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ModelFormatError):
        CnvModel.load(tmp_path / "junk.npz")


def random_model(seed: int) -> CnvModel:
    rng = np.random.default_rng(seed)
    bits = {n: rng.integers(0, 256, (fan_out(n), (fan_in(n) + 7) // 8), dtype=np.uint8) for n in LAYERS}
    thresholds = {"conv1": rng.integers(-200, 200, 64).astype(np.int32)}
    for n in LAYERS[1:-1]:
        k = fan_in(n)
        thresholds[n] = rng.integers(k // 2 - 8, k // 2 + 8, fan_out(n)).astype(np.int32)
    return CnvModel(bits, thresholds, {"class_names": list(CLASS_NAMES)})


def test_reference_matches_a_direct_loop_on_the_first_layer():
    """conv1 written out with explicit loops agrees with the reference's patch matmul."""
    model = random_model(1)
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    q = np.array(PIXEL_TO_Q17)[image[0]]
    w = model.weights_pm1("conv1").reshape(64, 3, 3, 3)  # (cout, kh, kw, cin)
    direct = np.zeros((30, 30, 64), dtype=np.int64)
    for y in range(30):
        for x in range(30):
            direct[y, x] = np.einsum("hwc,ohwc->o", q[y:y + 3, x:x + 3, :], w)
    patches = cnv_reference._patches(q[None].astype(np.int32))
    assert (cnv_reference._int_matmul(patches, model.weights_pm1("conv1").T)[0] == direct).all()


def test_pooling_is_an_or_of_bits():
    bits = np.zeros((1, 4, 4, 1), dtype=bool)
    bits[0, 1, 0, 0] = bits[0, 3, 3, 0] = True
    assert cnv_reference._pool(bits)[0, :, :, 0].tolist() == [[True, False], [False, True]]


def test_ties_go_to_the_lowest_class(monkeypatch):
    monkeypatch.setattr(cnv_reference, "fc3_popcounts", lambda m, x: np.array([[3, 7, 7, 1, 7, 0, 0, 0, 0, 0]]))
    assert cnv_reference.classify(None, None).tolist() == [1]


@pytest.mark.skipif(not ARCHIVE.exists(), reason=f"needs the CIFAR-10 training archive ({ARCHIVE})")
def test_known_validation_images_are_classified_correctly(shipped):
    """A handful of held-out images, read from the training archive (never stored in git)."""
    from octoray.models.data import class_balanced_split, decode_members, index_archive

    names, labels = index_archive(ARCHIVE)
    recipe = shipped.metadata["recipe"]
    _, val_idx = class_balanced_split(labels, recipe["val_per_class"], recipe["split_seed"])
    chosen = val_idx[::100]  # 50 held-out images, 5 of each class
    images = decode_members(ARCHIVE, [names[i] for i in chosen])
    correct = (cnv_reference.classify(shipped, images) == labels[chosen]).sum()
    # the model's validation accuracy predicts how many of the 50 it gets right
    expected = shipped.metadata["validation"]["integer_accuracy"] * len(chosen)
    assert correct >= expected - 3 * np.sqrt(expected * (1 - expected / len(chosen)))


def test_the_portable_training_state_is_the_shipped_model():
    """benchmarks/torch_classify.py runs the float model from training/: folded, it must give
    exactly the shipped integer model (bits and thresholds), or the benchmark's baseline
    is another network."""
    pytest.importorskip("torch")
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from torch_classify import DEFAULT_WEIGHTS

    from octoray.models.cnv import CNV
    from octoray.models.export import export
    from octoray.models.portable import load_portable

    model = CNV()
    load_portable(DEFAULT_WEIGHTS, model)
    bits, thresholds = export(model)
    with np.load(DEFAULT_PATH, allow_pickle=False) as z:
        for name, packed in bits.items():
            assert np.array_equal(packed, z[f"{name}.weight_bits"]), name
        for name, t in thresholds.items():
            assert np.array_equal(t, z[f"{name}.thresholds"]), name
