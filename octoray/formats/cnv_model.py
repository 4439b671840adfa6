"""The shipped CNV-W1A1 model file: +-1 weights packed as bits, one integer threshold per
channel (FINN's folding of BatchNorm + sign), and metadata.  numpy ``.npz``, loaded with
``allow_pickle=False``; every kernel (numpy reference, C CPU kernel, FPGA emulator) runs it.

Conventions, identical in every kernel:

- Input: uint8 pixels, NHWC, 32x32x3, quantised with ``PIXEL_TO_Q17``.
- A bit 1 stands for +1, a bit 0 for -1.  Convolution weights are ordered (kh, kw, cin) along
  the packed axis, fully-connected weights by input feature; bits are packed little-endian
  (``np.packbits(..., bitorder="little")``), rows padded to whole bytes.
- conv1 (8-bit input): ``acc = sum(q * w)``; the output bit is ``acc >= T``.
- Binary layers: ``p = popcount(xnor(x, w))`` over the K real inputs; the bit is ``p >= T``.
  (BatchNorm channels with a negative scale had their weights negated at export.)
- 2x2 max-pooling of bits is an OR.  The class is the argmax of fc3's popcounts, the lowest
  index winning a tie.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FORMAT = "octoray-cnv-w1a1"
VERSION = 1
LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "fc1", "fc2", "fc3")
CONV_SHAPES = {  # name: (cin, cout); all 3x3, unpadded
    "conv1": (3, 64), "conv2": (64, 64), "conv3": (64, 128),
    "conv4": (128, 128), "conv5": (128, 256), "conv6": (256, 256),
}
FC_SHAPES = {"fc1": (256, 512), "fc2": (512, 512), "fc3": (512, 10)}
POOL_AFTER = ("conv2", "conv4")
DEFAULT_PATH = Path(__file__).resolve().parent.parent / "models" / "cnv_w1a1.npz"


def fan_in(name: str) -> int:
    if name in CONV_SHAPES:
        return 9 * CONV_SHAPES[name][0]
    return FC_SHAPES[name][0]


def fan_out(name: str) -> int:
    return (CONV_SHAPES.get(name) or FC_SHAPES[name])[1]


class ModelFormatError(ValueError):
    """The file is not a CNV-W1A1 model this version of octoray can run."""


class CnvModel:
    """Packed weights and thresholds by layer name, and the metadata."""

    def __init__(self, weight_bits: dict[str, np.ndarray], thresholds: dict[str, np.ndarray], metadata: dict):
        self.weight_bits = weight_bits
        self.thresholds = thresholds
        self.metadata = metadata
        self._check()

    @property
    def class_names(self) -> list[str]:
        return list(self.metadata["class_names"])

    def weights_pm1(self, name: str) -> np.ndarray:
        """Weights as int8 +-1, shape (cout, K)."""
        bits = np.unpackbits(self.weight_bits[name], axis=1, count=fan_in(name), bitorder="little")
        return bits.astype(np.int8) * 2 - 1

    def _check(self) -> None:
        for name in LAYERS:
            if name not in self.weight_bits:
                raise ModelFormatError(f"layer {name} is missing")
            want = (fan_out(name), (fan_in(name) + 7) // 8)
            got = self.weight_bits[name].shape
            if got != want or self.weight_bits[name].dtype != np.uint8:
                raise ModelFormatError(f"{name} weights have shape {got}, expected {want} uint8")
            if name != "fc3":
                t = self.thresholds.get(name)
                if t is None or t.shape != (fan_out(name),) or t.dtype.kind != "i":
                    raise ModelFormatError(f"{name} thresholds must be {fan_out(name)} integers")

    def save(self, path: Path) -> None:
        arrays = {f"{name}.weight_bits": bits for name, bits in self.weight_bits.items()}
        arrays.update({f"{name}.thresholds": t.astype(np.int32) for name, t in self.thresholds.items()})
        meta = dict(self.metadata, format=FORMAT, version=VERSION)
        arrays["metadata"] = np.array(json.dumps(meta, sort_keys=True))
        path = Path(path)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez_compressed(tmp, **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path | str | None = None) -> "CnvModel":
        path = Path(path) if path else DEFAULT_PATH
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["metadata"]))
                if meta.get("format") != FORMAT or meta.get("version") != VERSION:
                    raise ModelFormatError(f"{path}: not a {FORMAT} v{VERSION} model")
                bits = {n: z[f"{n}.weight_bits"] for n in LAYERS}
                thresholds = {n: z[f"{n}.thresholds"] for n in LAYERS if n != "fc3"}
        except (OSError, KeyError, ValueError) as error:
            if isinstance(error, ModelFormatError):
                raise
            raise ModelFormatError(f"{path}: {error}") from None
        return cls(bits, thresholds, meta)
