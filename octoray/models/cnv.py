"""CNV-W1A1 in plain PyTorch: +-1 weights and activations with a straight-through estimator.

Topology and conventions follow Brevitas' bnn_pynq CNV (see the README's model section):
sign(0) = +1, BatchNorm eps 1e-4, no biases, OR-able max-pooling after the sign, a final
scalar TensorNorm.  Plain PyTorch trains about twice as fast as Brevitas on the CPU.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from octoray.formats.cnv_input import PIXEL_TO_Q17
from octoray.models import popcount

BN_EPS = 1e-4
CONV_CHANNELS = ((3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256))
POOL_AFTER = (1, 3)  # indices of the convolutions followed by 2x2 max-pooling
FC_FEATURES = ((256, 512), (512, 512), (512, 10))


def _sign(x: torch.Tensor) -> torch.Tensor:
    """+-1 with sign(0) = sign(-0.0) = +1, as the kernels compare (x >= 0): torch.sign's
    {-1, 0, 1} shifted by a half and signed again, three passes over floats that cost a third
    of adding the bool tensor (x == 0) and half of torch.where (docs/design.md)."""
    return torch.sign(x).add_(0.5).sign_()


# hardtanh's backward passes the gradient where min < x < max; the float32 neighbours of +-1
# make that |x| <= 1, the straight-through estimator's window, in one fused pass
_JUST_ABOVE_ONE = float(torch.nextafter(torch.tensor(1.0), torch.tensor(2.0)))


class _SignSTE(torch.autograd.Function):
    """sign with sign(0)=+1; the gradient passes where |x| <= 1 (hardtanh's)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return _sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        if x.dtype == torch.float32:
            return torch.ops.aten.hardtanh_backward(grad, x, -_JUST_ABOVE_ONE, _JUST_ABOVE_ONE)
        return grad * (x.abs() <= 1).to(grad.dtype)


class _WeightSignSTE(torch.autograd.Function):
    """Binarise latent weights; the gradient passes unchanged (they are clipped to [-1, 1])."""

    @staticmethod
    def forward(ctx, w):
        return _sign(w)

    @staticmethod
    def backward(ctx, grad):
        return grad


class _ApproxSignSTE(_SignSTE):
    """sign with ApproxSign's backward (Bi-Real Net): the gradient of a piecewise quadratic,
    2 - 2|x| where |x| <= 1, closer to sign's own than hardtanh's flat 1."""

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (2 - 2 * x.abs()).clamp_(min=0).to(grad.dtype)


STE_BACKWARDS = {"hardtanh": _SignSTE, "approxsign": _ApproxSignSTE}


def binary_sign(x: torch.Tensor, ste: str = "hardtanh") -> torch.Tensor:
    return STE_BACKWARDS[ste].apply(x)


def _forward_weight(layer: nn.Module) -> torch.Tensor:
    """The weights a binary layer's forward pass uses: sign(w); w itself in a staged recipe's
    real first stage (`binarize` False); in between while `--binarize-over` turns the real
    weights into binary ones: w + share (sign(w) - w) (the blend), or sign(w) for the share of
    the weights largest in magnitude and w for the rest (`binary_mask`). The gradient is 1
    either way (the sign's straight-through), so only what the forward pass sees moves."""
    if not layer.binarize:
        return layer.weight
    signs = _WeightSignSTE.apply(layer.weight)
    if layer.binary_share >= 1:
        return signs
    if layer.binary_mask is not None:
        return torch.where(layer.binary_mask, signs, layer.weight)
    return torch.lerp(layer.weight, signs, layer.binary_share)


@torch.no_grad()
def largest_magnitudes(weight: torch.Tensor, share: float) -> torch.Tensor:
    """A mask of the share of the weights largest in |w| (ties at the threshold included): the
    ones sign(w) changes least, which `--binarize-order magnitude` makes binary first."""
    count = round(share * weight.numel())
    if count == 0:
        return torch.zeros_like(weight, dtype=torch.bool)
    magnitude = weight.abs()
    return magnitude >= magnitude.flatten().kthvalue(weight.numel() - count + 1).values


class BinaryConv2d(nn.Conv2d):
    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, kernel_size=3, bias=False)
        nn.init.uniform_(self.weight, -1.0, 1.0)
        self.binarize = True  # False: the staged recipe's first stage, real weights (CNV's `weights`)
        self.binary_share = 1.0  # below 1 while --binarize-over anneals (CNV.blend_weights)
        self.binary_mask = None  # which weights are binary already, with --binarize-order magnitude
        self.popcount = True  # False: always a float convolution (benchmarks/train_step.py compares)
        self.gradients = torch.float32  # the counted convolution's backward: float32 or bfloat16

    def binary_weight(self) -> torch.Tensor:
        return _forward_weight(self)

    def forward(self, x: torch.Tensor, binary_input: bool = False) -> torch.Tensor:
        """binary_input: x is all +-1 (a sign's output), so with binary weights the sums are
        counted from sign bits where popcount.usable() (the same numbers, faster), and the
        backward pass may compute in bfloat16 (`gradients`) whatever the weights."""
        weight = self.binary_weight()
        counted = (binary_input and self.binarize and self.binary_share >= 1 and self.popcount
                   and popcount.usable(x, weight))
        if counted or (binary_input and self.gradients != torch.float32):
            return popcount.conv2d(x, weight, self.gradients, counted)
        return F.conv2d(x, weight)


class BinaryLinear(nn.Linear):
    def __init__(self, fin: int, fout: int):
        super().__init__(fin, fout, bias=False)
        nn.init.uniform_(self.weight, -1.0, 1.0)
        self.binarize = True
        self.binary_share = 1.0
        self.binary_mask = None

    def binary_weight(self) -> torch.Tensor:
        return _forward_weight(self)

    def forward(self, x):
        return F.linear(x, self.binary_weight())


class TensorNorm(nn.Module):
    """One scalar affine over all logits, normalised by running statistics (Brevitas' TensorNorm)."""

    def __init__(self, momentum: float = 0.1):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()))
        self.bias = nn.Parameter(torch.zeros(()))
        self.register_buffer("running_mean", torch.zeros(()))
        self.register_buffer("running_var", torch.ones(()))
        self.momentum = momentum

    def forward(self, x):
        if self.training:
            mean = x.mean()
            var = x.var(unbiased=False)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach().float(), self.momentum)
                self.running_var.lerp_(x.var(unbiased=True).detach().float(), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        return (x - mean) / torch.sqrt(var + BN_EPS) * self.weight + self.bias


class CNV(nn.Module):
    """Input: uint8 pixels, NCHW.  Output: 10 logits (after TensorNorm).

    weights="real" keeps the latent weights (still clipped to [-1, 1]) in the forward pass,
    activations="real" puts hardtanh where sign was: a first stage of a staged recipe (one of
    the two binary, then both), whose result only seeds a binary run; it is never exported."""

    def __init__(self, ste: str = "hardtanh", weights: str = "binary", activations: str = "binary"):
        super().__init__()
        self.ste = ste  # the activations' backward pass (training only; inference is sign either way)
        if activations not in ("binary", "real"):
            raise ValueError(f"activations must be binary or real, not {activations!r}")
        self.real_activations = activations == "real"
        self.register_buffer("pixel_lut", torch.tensor(PIXEL_TO_Q17, dtype=torch.float32) / 128.0)
        self.convs = nn.ModuleList(BinaryConv2d(i, o) for i, o in CONV_CHANNELS)
        self.conv_bns = nn.ModuleList(nn.BatchNorm2d(o, eps=BN_EPS) for _, o in CONV_CHANNELS)
        self.fcs = nn.ModuleList(BinaryLinear(i, o) for i, o in FC_FEATURES)
        self.fc_bns = nn.ModuleList(nn.BatchNorm1d(o, eps=BN_EPS) for _, o in FC_FEATURES[:-1])
        self.tensor_norm = TensorNorm()
        if weights not in ("binary", "real"):
            raise ValueError(f"weights must be binary or real, not {weights!r}")
        for layer in (*self.convs, *self.fcs):
            layer.binarize = weights == "binary"

    def quantize_input(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.pixel_lut[pixels.long()]

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return F.hardtanh(x) if self.real_activations else binary_sign(x, self.ste)

    def features(self, pixels: torch.Tensor, taps: list | None = None) -> torch.Tensor:
        """The last hidden layer's activations; `taps`, where given, gets every hidden layer's
        normalised sums, what its sign decides on (`train --guide` matches them)."""
        x = self.quantize_input(pixels)
        for i, (conv, bn) in enumerate(zip(self.convs, self.conv_bns)):
            x = self._tapped(bn(conv(x, binary_input=i > 0 and not self.real_activations)), taps)
            if i in POOL_AFTER:
                x = F.max_pool2d(x, 2)
        x = x.flatten(1)
        for fc, bn in zip(self.fcs[:-1], self.fc_bns):
            x = self._tapped(bn(fc(x)), taps)
        return x

    def _tapped(self, sums: torch.Tensor, taps: list | None) -> torch.Tensor:
        if taps is not None:
            taps.append(sums)
        return self.activation(sums)

    def forward(self, pixels: torch.Tensor, taps: list | None = None) -> torch.Tensor:
        return self.tensor_norm(self.fcs[-1](self.features(pixels, taps)))

    def norms(self) -> list[nn.Module]:
        """Every BatchNorm and the TensorNorm: what inference folds into thresholds."""
        return [*self.conv_bns, *self.fc_bns, self.tensor_norm]

    def freeze_norms(self) -> None:
        """Every norm in evaluation mode (their running statistics, not the batch's, and left
        as they are) while the rest of the network trains."""
        for norm in self.norms():
            norm.eval()

    def count_popcounts(self, enabled: bool) -> None:
        """Whether the binary convolutions count sign bits where they can (the default) or
        always convolve floats: the same numbers either way."""
        for conv in self.convs:
            conv.popcount = enabled

    @classmethod
    def trained_as(cls, recipe: dict) -> "CNV":
        """The network a run's recipe trains: real weights or activations in a staged recipe's
        first stage, binary ones otherwise (a recipe from before those keys existed)."""
        return cls(weights=recipe.get("weights", "binary"), activations=recipe.get("activations", "binary"))

    def blend_weights(self, share: float, order: str = "blend") -> None:
        """The share of sign(w) in every binary layer's forward weights: 1 (the default) is the
        binary network; `train --binarize-over E` raises it to 1 over E epochs. order "blend"
        moves every weight that share of the way to its sign; "magnitude" makes that share of
        each layer's weights binary, the largest in |w| (as measured now) first."""
        if order not in ("blend", "magnitude"):
            raise ValueError(f"order must be blend or magnitude, not {order!r}")
        for layer in (*self.convs, *self.fcs):
            layer.binary_share = min(1.0, share)
            magnitude = order == "magnitude" and share < 1
            layer.binary_mask = largest_magnitudes(layer.weight, share) if magnitude else None

    def count_gradients_in(self, dtype: torch.dtype) -> None:
        """The dtype the backward pass of the convolutions of +-1 inputs (conv2-conv6) computes
        in: float32 (the default) or bfloat16, faster where the CPU has AMX
        (popcount.bf16_is_native())."""
        for conv in self.convs:
            conv.gradients = dtype

    def binary_weights(self) -> list[nn.Parameter]:
        """The weights that binarise (each layer's): what `clip_weights` clips and Bop flips."""
        return [layer.weight for layer in (*self.convs, *self.fcs)]

    @torch.no_grad()
    def clip_weights(self) -> None:
        for weight in self.binary_weights():
            weight.clamp_(-1.0, 1.0)

    @torch.no_grad()
    def snap_weights_to_signs(self) -> None:
        """Every latent weight replaced by its sign, the +-1 it binarises to (the forward pass
        is unchanged): where Bop starts, with no latent weights."""
        for weight in self.binary_weights():
            weight.copy_(_sign(weight))
