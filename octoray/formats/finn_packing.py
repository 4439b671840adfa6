"""FINN's packing of tensors into the bytes its Alveo DMAs move, as FINN's generated drivers
do it (finnpy_to_packed_bytearray with reverse_endian and reverse_inner), and its data type
names: what octoray's CNV driver writes to a card and reads back."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import numpy as np


def finn_pack(folded: np.ndarray, bits: int) -> np.ndarray:
    """FINN's packing of a folded tensor into bytes, as its generated drivers do it.

    Element i of the innermost dimension sits at bits [i*bits, (i+1)*bits) of one
    little-endian word per row; rows are padded to whole bytes.  Values are unsigned codes
    (bipolar data: -1 -> 0, +1 -> 1 beforehand).  Shape: folded.shape[:-1] + (row bytes,)."""
    import numpy as np

    folded = np.asarray(folded)
    if bits == 8:
        return np.ascontiguousarray(folded, dtype=np.uint8)
    if not 1 <= bits <= 32:
        raise ValueError(f"unsupported width {bits}")
    if folded.size and (folded.min() < 0 or folded.max() >= 2 ** bits):
        raise ValueError(f"values do not fit in {bits} unsigned bits")
    codes = folded.astype(np.uint64)
    width = codes.shape[-1] * bits
    row_bytes = (width + 7) // 8
    # bit j of element i goes to row bit i*bits + j
    bit_planes = (codes[..., :, None] >> np.arange(bits, dtype=np.uint64)) & 1
    row_bits = bit_planes.reshape(*codes.shape[:-1], width).astype(np.uint8)
    pad = row_bytes * 8 - width
    if pad:
        row_bits = np.concatenate([row_bits, np.zeros((*codes.shape[:-1], pad), np.uint8)], axis=-1)
    return np.packbits(row_bits, axis=-1, bitorder="little")


def finn_unpack(packed: np.ndarray, bits: int, folded_shape: tuple[int, ...], signed: bool = False) -> np.ndarray:
    """Inverse of :func:`finn_pack`: the codes of `folded_shape`, unsigned (uint8 where bits
    <= 8, else uint32), or with `signed` read as two's complement (int64), as FINN reads INT types."""
    import numpy as np

    packed = np.asarray(packed, dtype=np.uint8)
    if bits == 8 and not signed:
        return packed.reshape(folded_shape)
    inner = folded_shape[-1]
    row_bits = np.unpackbits(packed, axis=-1, count=inner * bits, bitorder="little")
    planes = row_bits.reshape(*folded_shape[:-1], inner, bits).astype(np.uint32)
    codes = (planes << np.arange(bits, dtype=np.uint32)).sum(axis=-1, dtype=np.uint32)
    if signed:
        values = codes.astype(np.int64)
        return np.where(values >= 2 ** (bits - 1), values - 2 ** bits, values).reshape(folded_shape)
    return codes.astype(np.uint8 if bits <= 8 else np.uint32).reshape(folded_shape)


def finn_type(datatype: str) -> tuple[int, bool]:
    """(bits, signed) of a FINN data type name as its drivers' io_shape_dict writes it:
    BINARY, BIPOLAR (1 bit, unsigned codes), UINTn or INTn (n up to 32)."""
    if datatype in ("BINARY", "BIPOLAR"):
        return 1, False
    for prefix, signed in (("UINT", False), ("INT", True)):
        width = datatype[len(prefix):]
        if datatype.startswith(prefix) and width.isdigit() and 1 <= int(width) <= 32:
            return int(width), signed
    raise ValueError(f"FINN data type {datatype} is not supported by this driver")
