"""Binary convolutions by XNOR-popcount for training on the CPU.

Every convolution of CNV after the first takes +-1 activations and +-1 weights, so its
outputs are sums of +-1 products: integers that a float convolution also gets exactly.
Counting the differing sign bits (``_popcount_conv.c``) gives the same numbers from a
32nd of the data, which saves part of each training step's forward pass (docs/training.md).
The backward pass is PyTorch's own convolution backward on the same tensors, so a step
is the same to the bit either way (tests/test_training.py).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from octoray.models import _popcount_conv

_WORDS = {64: 1, 128: 2, 256: 4}  # input channels -> 64-bit words a position
_pools: dict[int, ThreadPoolExecutor] = {}


def usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether conv2d(x, weight) can be counted here: a CPU float32 3x3 convolution of 64,
    128 or 256 channels whose input is stored channels-last (as the trainer stores it)."""
    return (bool(_popcount_conv.AVAILABLE) and x.device.type == "cpu" and x.dtype == torch.float32
            and weight.dtype == torch.float32 and x.dim() == 4 and x.shape[1] in _WORDS
            and tuple(weight.shape[1:]) == (x.shape[1], 3, 3)
            and x.is_contiguous(memory_format=torch.channels_last))


def _in_parallel(work, stop: int) -> None:
    """work(first, stop) over [0, stop), cut into one range a thread of PyTorch's budget."""
    threads = max(1, min(torch.get_num_threads(), stop))
    if threads == 1:
        work(0, stop)
        return
    pool = _pools.get(threads)
    if pool is None:
        pool = _pools[threads] = ThreadPoolExecutor(threads - 1, thread_name_prefix="octoray-popcount")
    bounds = [stop * i // threads for i in range(threads + 1)]
    futures = [pool.submit(work, a, b) for a, b in zip(bounds[1:], bounds[2:])]
    work(bounds[0], bounds[1])  # the calling thread takes the first range itself
    for future in futures:
        future.result()


def _sign_bits(values: np.ndarray) -> np.ndarray:
    """(..., C) float32, C a multiple of 64 -> (..., C / 64) uint64 sign bits."""
    bits = np.empty(values.shape[:-1] + (values.shape[-1] // 64,), dtype=np.uint64)
    flat, words = values.reshape(-1), bits.reshape(-1)
    _in_parallel(lambda a, b: _popcount_conv.pack(flat, words, a, b), words.size)
    return bits


def conv_sums(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """conv2d(x, weight) for +-1 x (N, C, H, W, channels-last) and +-1 weight (Cout, C, 3, 3),
    counted from sign bits; the result is channels-last, as conv2d's would be."""
    n, c, h, w = x.shape
    cout = weight.shape[0]
    x_bits = _sign_bits(x.detach().permute(0, 2, 3, 1).numpy())
    w_bits = _sign_bits(np.ascontiguousarray(weight.detach().permute(0, 2, 3, 1).numpy()))
    out = torch.empty((n, h - 2, w - 2, cout), dtype=torch.float32)
    flat = out.numpy()
    _in_parallel(lambda a, b: _popcount_conv.conv(x_bits, w_bits, flat, h, w, _WORDS[c], a, b), n)
    return out.permute(0, 3, 1, 2)


def bf16_is_native() -> bool:
    """Whether this CPU has AMX tiles, on which oneDNN's bfloat16 convolutions run
    faster than float32 ones; without them bfloat16 is emulated and slower (docs/training.md)."""
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


class _BinaryInputConv2d(torch.autograd.Function):
    """conv2d of a +-1 input: counted forward (the weights +-1 too) or a float32 one (real
    weights), PyTorch's convolution backward in float32 or in bfloat16 (the +-1 input is exact
    in it; the gradient, and real weights, are rounded to 8 bits)."""

    @staticmethod
    def forward(ctx, x, weight, gradients, counted):
        ctx.save_for_backward(x, weight)
        ctx.gradients = gradients
        return conv_sums(x, weight) if counted else F.conv2d(x, weight)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        dtype = ctx.gradients
        grad_x, grad_weight, _ = torch.ops.aten.convolution_backward(
            grad.to(dtype), x.to(dtype), weight.to(dtype), None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
            [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False])
        if dtype != torch.float32:
            grad_x = None if grad_x is None else grad_x.float()
            grad_weight = None if grad_weight is None else grad_weight.float()
        return grad_x, grad_weight, None, None


def conv2d(x: torch.Tensor, weight: torch.Tensor, gradients: torch.dtype = torch.float32,
           counted: bool = True) -> torch.Tensor:
    """F.conv2d(x, weight) (stride 1, no padding, no bias) for a +-1 x: counted from sign bits
    where the weights are +-1 too and usable() (counted), else a float convolution; its
    backward pass computes in `gradients` (float32 or bfloat16)."""
    return _BinaryInputConv2d.apply(x, weight, gradients, counted)
