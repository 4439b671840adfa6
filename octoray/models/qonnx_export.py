"""CNV-W1A1 as a QONNX graph for FINN's ``build_dataflow``, computing what fclassify computes.

The graph is written from the integer model (the file every kernel runs), not from the
float network: each folded threshold becomes a BatchNormalization whose decision boundary
lies half-way between two accumulator values the layer can produce, so that neither
onnxruntime's float arithmetic nor FINN's own folding of BatchNorm into thresholds (a
float division, then rounding up) can land on the other side of it.  FINN then recovers
exactly octoray's integer thresholds, and the graph's labels are fclassify's by
construction; the tests check it image by image.

Its structure is that of Brevitas' ``cnv_1w1a`` exported to QONNX and cleaned by qonnx,
with FINN's CNV pre- and post-processing already merged (``ToTensor``'s division by 255 in
front, TopK(1) at the end), as FINN v0.10.1's end-to-end CNV flow and finn-examples'
``*_pre_post.onnx`` models have them:

    global_in  float32 (1, 3, 32, 32), annotated UINT8: the pixel values 0..255, NCHW
    Div 255, Mul 2, Sub 1                       x = 2p/255 - 1
    Quant (scale 2^-7, 8 bits, signed, not narrow, ROUND)      the Q1.7 input
    6 x [Conv(BipolarQuant(W)), BatchNormalization, BipolarQuant], MaxPool after 2 and 4
    Reshape (1, -1)
    2 x [MatMul(BipolarQuant(W)), BatchNormalization, BipolarQuant]
    MatMul(BipolarQuant(W))                     fc3: 2 p - 512 for each class
    Sub, Div, Mul, Add                          TensorNorm, scale > 0
    TopK(k=1)  ->  global_out int64 (1, 1)      the class; ties go to the lowest index

Every BipolarQuant has scale 1 and every BatchNormalization scale > 0 (channels whose
trained BatchNorm scale is negative had their weights negated when the model was folded),
which is what FINN's ConvertQONNXtoFINN and streamlining expect of a W1A1 network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from octoray.formats.cnv_model import CONV_SHAPES, POOL_AFTER, CnvModel, fan_in

FINN_VERSION = "v0.10.1"
"""The FINN release whose QONNX import and streamlining this graph's structure follows."""

INPUT, OUTPUT = "global_in", "global_out"
OPSET, IR_VERSION = 13, 8  # as FINN v0.10.1's end-to-end tests export; readable by the onnx 1.13 it pins
QONNX_DOMAIN = "qonnx.custom_op.general"
BN_EPS = 1e-4
INSTALL_HINT = "pip install 'octoray[qonnx]' (or '.[qonnx]' in a checkout)"


class MissingExtra(RuntimeError):
    """The qonnx extra (qonnx, onnx, onnxruntime) is not installed."""


def require_extra() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import qonnx  # noqa: F401
    except ImportError as error:
        raise MissingExtra(f"the QONNX export needs {error.name or 'qonnx'}: {INSTALL_HINT}") from None


@dataclass(frozen=True)
class TensorNorm:
    """The last layer's scalar affine (x - mean) / std * weight + bias, std = sqrt(var + eps)
    and weight > 0: a positive affine keeps the order of the logits, so FINN absorbs it into
    TopK.  The integer model file keeps only its sign (folded into fc3's weights), so a
    graph written from that file carries the identity."""

    mean: float = 0.0
    std: float = 1.0
    weight: float = 1.0
    bias: float = 0.0

    def check(self) -> None:
        """The affine must keep fc3's 513 possible outputs (2p - 512) apart in float32."""
        if not (self.weight > 0 and self.std > 0):
            raise ValueError(f"TensorNorm must have a positive scale, got {self}")
        y = self.apply(np.arange(-512, 513, 2, dtype=np.float32)).astype(np.float64)
        gap = np.diff(y).min()
        if not gap > 1e-5 * max(1.0, float(np.abs(y).max())):
            raise ValueError(f"TensorNorm {self} merges logits in float32 (gap {gap:g})")

    def apply(self, x: np.ndarray) -> np.ndarray:
        f = np.float32
        return (x - f(self.mean)) / f(self.std) * f(self.weight) + f(self.bias)


def _conv_weights(model: CnvModel, name: str) -> np.ndarray:
    """(Cout, Cin, 3, 3) float +-1 from the model's (Cout, (kh, kw, cin)) rows."""
    cin, cout = CONV_SHAPES[name]
    return model.weights_pm1(name).reshape(cout, 3, 3, cin).transpose(0, 3, 1, 2).astype(np.float32)


def _boundaries(model: CnvModel, name: str) -> np.ndarray:
    """Per channel, the BatchNorm mean that puts the sign change half-way below the threshold.

    conv1 sees acc / 128 (the Quant output is q / 128, weights +-1), and fires iff acc >= T:
    the boundary is (T - 1/2) / 128.  A binary layer sees the dot product 2p - K of +-1
    vectors and fires iff p >= T, i.e. 2p - K >= 2T - K: the boundary is 2T - K - 1, an
    integer of the other parity than every dot product the layer can produce."""
    t = model.thresholds[name].astype(np.float64)
    if name == "conv1":
        return ((t - 0.5) / 128).astype(np.float32)
    return (2 * t - fan_in(name) - 1).astype(np.float32)


class _Graph:
    """Nodes and initializers, named after the layers."""

    def __init__(self):
        self.nodes, self.initializers = [], []

    def const(self, name: str, value) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, name: str, **attrs) -> str:
        from onnx import helper

        domain = QONNX_DOMAIN if op in ("Quant", "BipolarQuant") else ""
        self.nodes.append(helper.make_node(op, inputs, [output], name=name, domain=domain, **attrs))
        return output

    def binary_weights(self, name: str, weights: np.ndarray) -> str:
        w = self.const(f"{name}_weight", weights.astype(np.float32))
        return self.node("BipolarQuant", [w, self.const(f"{name}_weight_scale", np.ones(1, np.float32))],
                         f"{name}_weight_pm1", f"{name}_weight_quant")

    def batchnorm_sign(self, x: str, name: str, boundaries: np.ndarray) -> str:
        c = len(boundaries)
        params = [self.const(f"{name}_bn_{p}", v.astype(np.float32)) for p, v in (
            ("scale", np.ones(c)), ("bias", np.zeros(c)), ("mean", boundaries), ("var", np.full(c, 1 - BN_EPS)))]
        y = self.node("BatchNormalization", [x, *params], f"{name}_bn", f"{name}_bn", epsilon=BN_EPS)
        return self.node("BipolarQuant", [y, self.const(f"{name}_act_scale", np.ones(1, np.float32))],
                         f"{name}_out", f"{name}_act")


OUTPUTS = ("top1", "popcounts")


def build(model: CnvModel, tensor_norm: TensorNorm | None = None, source: str = "", output: str = "top1"):
    """The QONNX graph (a ``qonnx`` ModelWrapper, shapes inferred) of an integer CNV model.

    `output` "popcounts" ends the graph at fc3 (its ten 2p - 512, no TensorNorm, no TopK):
    FINN turns that MatMul into an XNOR-popcount MVAU and leaves the 2x - 512 on the host, so
    the card returns the popcounts themselves, which fclassify sums over views."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, not {output!r}")
    require_extra()
    from onnx import TensorProto, helper
    from qonnx.core.datatype import DataType
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.infer_shapes import InferShapes

    tensor_norm = tensor_norm or TensorNorm()
    tensor_norm.check()
    g = _Graph()
    f32 = np.float32
    # FINN's CNV pre-processing (ToTensor: /255), then Brevitas CNV's own 2x - 1 and input quantiser
    x = g.node("Div", [INPUT, g.const("to_tensor_divisor", f32(255))], "pixels_01", "to_tensor")
    x = g.node("Mul", [x, g.const("input_gain", f32(2))], "pixels_02", "input_gain")
    x = g.node("Sub", [x, g.const("input_offset", np.ones(1, f32))], "pixels_pm1", "input_offset")
    x = g.node("Quant", [x, g.const("input_scale", f32(2.0 ** -7)), g.const("input_zeropt", f32(0)),
                         g.const("input_bitwidth", f32(8))], "pixels_q17", "input_quant",
               signed=1, narrow=0, rounding_mode="ROUND")
    for name in CONV_SHAPES:
        w = g.binary_weights(name, _conv_weights(model, name))
        x = g.node("Conv", [x, w], f"{name}_acc", name, kernel_shape=[3, 3], pads=[0, 0, 0, 0],
                   strides=[1, 1], dilations=[1, 1], group=1)
        x = g.batchnorm_sign(x, name, _boundaries(model, name))
        if name in POOL_AFTER:
            x = g.node("MaxPool", [x], f"{name}_pool", f"{name}_pool", kernel_shape=[2, 2],
                       strides=[2, 2], pads=[0, 0, 0, 0])
    x = g.node("Reshape", [x, g.const("flatten_shape", np.array([1, -1], np.int64))], "features", "flatten")
    for name in ("fc1", "fc2", "fc3"):
        w = g.binary_weights(name, model.weights_pm1(name).T)  # (in, out)
        x = g.node("MatMul", [x, w], f"{name}_acc", name)
        if name != "fc3":
            x = g.batchnorm_sign(x, name, _boundaries(model, name))
    if output == "top1":
        tn = tensor_norm
        x = g.node("Sub", [x, g.const("tensor_norm_mean", np.full(1, tn.mean, f32))], "tn_centred", "tensor_norm_sub")
        x = g.node("Div", [x, g.const("tensor_norm_std", np.full(1, tn.std, f32))], "tn_normed", "tensor_norm_div")
        x = g.node("Mul", [x, g.const("tensor_norm_weight", np.full(1, tn.weight, f32))], "tn_scaled",
                   "tensor_norm_mul")
        x = g.node("Add", [x, g.const("tensor_norm_bias", np.full(1, tn.bias, f32))], "logits", "tensor_norm_add")
        g.nodes.append(helper.make_node("TopK", [x, g.const("top_k", np.array([1], np.int64))],
                                        ["top_logit", OUTPUT], name="top1", axis=-1, largest=1, sorted=1))
        out = helper.make_tensor_value_info(OUTPUT, TensorProto.INT64, [1, 1])
        told = "the top-1 class index"
    else:
        g.nodes[-1].output[0] = OUTPUT  # fc3's MatMul writes the graph's output
        out = helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [1, 10])
        told = "fc3's 2p - 512 for each class, p its popcount"

    graph = helper.make_graph(
        g.nodes, "cnv_w1a1",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [1, 3, 32, 32])],
        [out], g.initializers)
    proto = helper.make_model(graph, producer_name="octoray", ir_version=IR_VERSION, opset_imports=[
        helper.make_opsetid("", OPSET), helper.make_opsetid(QONNX_DOMAIN, 1)])
    proto.doc_string = (
        "CNV-W1A1 (FINN/Brevitas cnv_1w1a topology) exported by octoray"
        + (f" from {source}" if source else "") + ". Input: float32 (1, 3, 32, 32) NCHW holding UINT8 "
        f"pixel values 0..255. Output: {told} (CIFAR-10 order: "
        + ", ".join(model.class_names) + "); ties go to the lowest index.")
    helper.set_model_props(proto, {"octoray.class_names": ",".join(model.class_names),
                                   "octoray.source": source or "integer CNV-W1A1 model",
                                   "octoray.finn_version": FINN_VERSION})
    wrapper = ModelWrapper(proto)
    wrapper.set_tensor_datatype(INPUT, DataType["UINT8"])
    if output == "top1":
        wrapper.set_tensor_datatype(OUTPUT, DataType["UINT32"])  # as qonnx's InsertTopK annotates it
    return wrapper.transform(InferShapes())


def save(wrapper, path: Path) -> None:
    """Write the graph atomically (a temporary file beside it, then a rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        wrapper.save(str(tmp))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def outputs(wrapper, images: np.ndarray, batch: int = 100) -> np.ndarray:
    """The graph's output (N, 1) or (N, 10) for uint8 images (N, 32, 32, 3) NHWC, from qonnx's
    own executor (fed NCHW float32, as FINN's CNV flow feeds it), ``batch`` images at a time."""
    require_extra()
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.change_batchsize import ChangeBatchSize
    from qonnx.transformation.infer_shapes import InferShapes

    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] != (32, 32, 3):
        raise ValueError(f"expected uint8 images of shape (N, 32, 32, 3), got {images.dtype} {images.shape}")
    inp, out = wrapper.graph.input[0].name, wrapper.graph.output[0].name
    width = wrapper.get_tensor_shape(out)[-1]
    results, sized = [], {}
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        if len(chunk) not in sized:
            sized[len(chunk)] = wrapper.transform(ChangeBatchSize(len(chunk))).transform(InferShapes())
        x = chunk.transpose(0, 3, 1, 2).astype(np.float32)
        results.append(execute_onnx(sized[len(chunk)], {inp: x})[out].reshape(len(chunk), width))
    return np.concatenate(results) if results else np.zeros((0, width))


def classify(wrapper, images: np.ndarray, batch: int = 100) -> np.ndarray:
    """Labels of uint8 images (N, 32, 32, 3) from the graph (its TopK, or the first of the
    highest fc3 outputs)."""
    out = outputs(wrapper, images, batch)
    return out[:, 0].astype(np.int64) if out.shape[1] == 1 else out.argmax(axis=1)


def synthetic_images(count: int, seed: int = 0) -> np.ndarray:
    """Smooth random colour fields (N, 32, 32, 3) uint8, which the network spreads over
    several classes where white noise falls into one."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (count, 4, 4, 3)).astype(np.float64)
    fine = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)
    noise = rng.normal(0, 24, fine.shape)
    return np.clip(fine + noise, 0, 255).astype(np.uint8)
