"""The drivers of octoray's FPGA overlays (PYNQ 3.0.1 API), one class per kernel interface
(FINN's buffer packing is octoray.formats.finn_packing).  They run on the card's thread
(octoray.kernels.fpga's CardThread); octoray.kernels.fpga chooses and opens them.  No card was available to verify
them on hardware: they are tested against the PYNQ emulator (fpga_emulator.py).
"""

from __future__ import annotations

from octoray.formats.finn_packing import finn_pack, finn_type, finn_unpack
from octoray.formats.gzip import SYNC_FLUSH_TAIL
from octoray.kernels import FpgaUnavailable

TYPE_CHECKING = False
if TYPE_CHECKING:
    import numpy as np


# Drivers


def _allocate(pynq, spec: dict, target, shape=None):
    import numpy as np

    shape = tuple(shape if shape is not None else spec["shape"])
    if target is None:
        return pynq.allocate(shape, dtype=np.dtype(spec["dtype"]))
    return pynq.allocate(shape, dtype=np.dtype(spec["dtype"]), target=target)


def _bank(overlay, manifest: dict):
    bank = manifest.get("memory")
    if not bank:
        return None
    target = getattr(overlay, bank, None)
    if target is None:
        raise FpgaUnavailable(f"{manifest['name']}: the overlay has no memory bank {bank}")
    return target


class _GzipOverlayDriver:
    """What both gzip overlays' drivers share: `deflate` in runs of at most `max_input`
    bytes (`_run`), and freeing their buffers and overlay."""

    max_input: int
    buffers: dict
    overlay = None

    def deflate(self, data) -> bytes:
        """Non-final deflate blocks of `data`, ending byte-aligned (joinable)."""
        import numpy as np

        view = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
        return b"".join(self._run(view[start:start + self.max_input]) for start in range(0, len(view), self.max_input))

    def close(self) -> None:
        for buf in self.buffers.values():
            buf.freebuffer()
        self.buffers = {}
        if self.overlay is not None:
            self.overlay.free()
            self.overlay = None


class GzipDriver(_GzipOverlayDriver):
    """``xilGzipCompBlock(in, out, compressd_size*, checksumData*, uint input_size,
    bool checksumType)`` on buffers allocated once, of the manifest's shapes."""

    def __init__(self, pynq, device, manifest: dict, xclbin: str):
        if manifest.get("interface") != "xilGzipCompBlock":
            raise FpgaUnavailable(f"{manifest['name']}: gzip interface {manifest.get('interface')} is not supported")
        self.manifest = manifest
        self.max_input = int(manifest["max_input_bytes"])
        self.overlay = pynq.Overlay(xclbin, device=device)
        self.buffers = {}
        try:
            self.kernel = getattr(self.overlay, manifest["kernel"])
            bank = _bank(self.overlay, manifest)
            for name in ("in", "out", "compressd_size", "checksumData"):
                self.buffers[name] = _allocate(pynq, manifest["buffers"][name], bank)
        except BaseException:
            self.close()
            raise
        if self.buffers["in"].nbytes < self.max_input:
            raise FpgaUnavailable(f"{manifest['name']}: input buffer smaller than max_input_bytes")

    def _run(self, piece: np.ndarray) -> bytes:
        import numpy as np

        b = self.buffers
        n = len(piece)
        src = b["in"][:n]
        np.copyto(src, piece)
        src.sync_to_device()
        b["checksumData"][0] = 0xFFFFFFFF  # CRC-32's initial register; the host keeps its own CRC
        b["checksumData"].sync_to_device()
        self.kernel.call(b["in"], b["out"], b["compressd_size"], b["checksumData"], n, True)
        b["compressd_size"].sync_from_device()
        size = int(b["compressd_size"][0])
        if not 0 < size <= b["out"].nbytes:
            raise RuntimeError(f"{self.manifest['name']}: kernel reported {size} compressed bytes "
                               f"for {n} input bytes (output buffer {b['out'].nbytes})")
        out = b["out"][:size]
        out.sync_from_device()
        return out.tobytes()


STORED_MAX = 65535  # a stored block's LEN is 16 bits


def stored_blocks(data) -> bytes:
    """`data` as non-final stored deflate blocks, starting and ending byte-aligned (each block:
    a 0x00 header byte, BFINAL=0 and BTYPE=00 padded to the byte, then LEN, NLEN and the bytes)."""
    data = memoryview(data).cast("B")
    parts = []
    for start in range(0, len(data), STORED_MAX):
        piece = data[start:start + STORED_MAX]
        n = len(piece)
        parts += [b"\x00", n.to_bytes(2, "little"), (n ^ 0xFFFF).to_bytes(2, "little"), piece]
    return b"".join(parts)


class Lz77HuffmanDriver(_GzipOverlayDriver):
    """The 2019.2 ``gzip_hbm`` pair on buffers allocated once, of the manifest's shapes:

    ``xilLz77Compress(in, lz77_out, compressd_size*, in_block_size*, dyn_ltree_freq*,
    dyn_dtree_freq*, uint block_size_in_kb, uint input_size)`` then ``xilHuffmanKernel(lz77_out,
    dyn_ltree_freq*, dyn_dtree_freq*, out, compressd_size*, in_block_size*, uint
    block_size_in_kb, uint input_size)``, as the library's host (L3 ``zlib.cpp``) binds them.

    A run takes up to ``max_input_bytes`` (8 MiB) as blocks of ``block_size`` (1 MiB), one an
    engine; the host gives each block's length in ``in_block_size[b]``.  Afterwards
    ``compressd_size[b]`` holds the deflate bytes of block b, written at ``out[b * block_size]``
    (one non-final dynamic-Huffman block and a sync flush).  The host joins the blocks in order.

    The library's host copies every block as the card wrote it.  This driver does not where the
    card's bytes cannot be right or do not help: a block whose output is not smaller than its
    input (random data: the kernels never emit a stored block, so it comes out larger than its
    1 MiB slot and runs into the next block's, written at the same time by another engine), the
    block after such a one (its start may be overwritten), and a block the kernels did not
    encode (under 128 bytes, some releases report its input size and write nothing).  Those the
    host writes itself as stored blocks from its own copy of the input."""

    INTERFACE = "xilLz77Compress+xilHuffmanKernel"
    BUFFERS = ("in", "lz77_out", "compressd_size", "in_block_size", "dyn_ltree_freq", "dyn_dtree_freq", "out")

    def __init__(self, pynq, device, manifest: dict, xclbin: str):
        if manifest.get("interface") != self.INTERFACE:
            raise FpgaUnavailable(f"{manifest['name']}: gzip interface {manifest.get('interface')} is not supported")
        self.manifest = manifest
        self.max_input = int(manifest["max_input_bytes"])
        self.block = int(manifest["block_size"])
        if self.block <= 0 or self.block % 1024 or self.max_input <= 0:
            raise FpgaUnavailable(f"{manifest['name']}: block_size must be a positive number of KiB")
        self.max_blocks = -(-self.max_input // self.block)
        self.stats = {"runs": 0, "card_blocks": 0, "stored_blocks": 0}
        self.overlay = pynq.Overlay(xclbin, device=device)
        self.buffers = {}
        try:
            kernels = manifest["kernels"]
            self.lz77 = getattr(self.overlay, kernels["lz77"])
            self.huffman = getattr(self.overlay, kernels["huffman"])
            bank = _bank(self.overlay, manifest)
            for name in self.BUFFERS:
                spec = manifest["buffers"][name]
                target = _bank(self.overlay, {"name": manifest["name"], "memory": spec["memory"]}) if spec.get("memory") else bank
                self.buffers[name] = _allocate(pynq, spec, target)
        except BaseException:
            self.close()
            raise
        b = self.buffers
        needed = {"in": self.max_input, "lz77_out": 4 * self.max_input, "out": self.max_blocks * self.block,
                  "compressd_size": 4 * self.max_blocks, "in_block_size": 4 * self.max_blocks,
                  "dyn_ltree_freq": 4 * 1024 * self.max_blocks, "dyn_dtree_freq": 4 * 64 * self.max_blocks}
        for name, nbytes in needed.items():
            if b[name].nbytes < nbytes:
                self.close()
                raise FpgaUnavailable(f"{manifest['name']}: buffer {name} holds {b[name].nbytes} bytes, "
                                      f"{nbytes} needed for max_input_bytes {self.max_input}")

    def block_lengths(self, n: int) -> list[int]:
        return [min(self.block, n - start) for start in range(0, n, self.block)]

    def _run(self, piece: np.ndarray) -> bytes:
        import numpy as np

        b = self.buffers
        n = len(piece)
        lengths = self.block_lengths(n)
        src = b["in"][:n]
        np.copyto(src, piece)
        src.sync_to_device()
        b["in_block_size"][:] = 0
        b["in_block_size"][:len(lengths)] = lengths
        b["in_block_size"].sync_to_device()
        kb = self.block // 1024
        self.lz77.call(b["in"], b["lz77_out"], b["compressd_size"], b["in_block_size"],
                       b["dyn_ltree_freq"], b["dyn_dtree_freq"], kb, n)
        self.huffman.call(b["lz77_out"], b["dyn_ltree_freq"], b["dyn_dtree_freq"], b["out"],
                          b["compressd_size"], b["in_block_size"], kb, n)
        self.stats["runs"] += 1
        sizes_buf = b["compressd_size"][:len(lengths)]
        sizes_buf.sync_from_device()
        sizes = [int(s) for s in sizes_buf]
        parts = []
        overran = False  # the previous block ran past its slot into this one's
        for i, (length, size) in enumerate(zip(lengths, sizes)):
            start = i * self.block
            if size == 0 or start + size > b["out"].nbytes:
                raise RuntimeError(f"{self.manifest['name']}: kernel reported {size} compressed bytes for block {i} "
                                   f"({length} input bytes, output buffer {b['out'].nbytes})")
            if size < length and not overran:
                out = b["out"][start:start + size]
                out.sync_from_device()
                body = out.tobytes()
                if not body.endswith(SYNC_FLUSH_TAIL):
                    raise RuntimeError(f"{self.manifest['name']}: block {i} does not end byte-aligned with a sync flush")
                parts.append(body)
                self.stats["card_blocks"] += 1
            else:
                parts.append(stored_blocks(piece[start:start + length]))
                self.stats["stored_blocks"] += 1
            overran = size > self.block
        return b"".join(parts)


class CnvDriver:
    """FINN's Alveo accelerator: ``idma0.start(ibuf, n)``, ``odma0.start(obuf, n)``, wait on
    the odma; packed uint8 buffers of the manifest's shapes with its batch size.

    The manifest's ``output`` says what the network ends with: ``top1`` (FINN's CNV flow,
    TopK turned into LabelSelect: one class index an image) or ``popcounts`` (a build that
    ends at fc3's MVAU: its ten popcounts, which summing views and ``--top-k`` need)."""

    OUTPUTS = {"top1": (1,), "popcounts": (10,)}  # the output's shape per image

    def __init__(self, pynq, device, manifest: dict, xclbin: str):
        import numpy as np

        if manifest.get("interface") != "finn-alveo":
            raise FpgaUnavailable(f"{manifest['name']}: interface {manifest.get('interface')} is not supported")
        io = manifest["io_shape"]
        self.manifest = manifest
        self.output = cnv_output(manifest)
        self.batch_size = int(manifest["batch_size"])
        try:
            self.ibits, _ = finn_type(io["idt"])
            self.obits, self.osigned = finn_type(io["odt"])
        except ValueError as error:
            raise FpgaUnavailable(f"{manifest['name']}: {error}") from None
        self.ishape_normal = tuple(io["ishape_normal"][1:])
        self.ishape_folded = tuple(io["ishape_folded"][1:])
        self.ishape_packed = tuple(io["ishape_packed"][1:])
        self.oshape_normal = tuple(io["oshape_normal"][1:])
        self.oshape_folded = tuple(io["oshape_folded"][1:])
        self.oshape_packed = tuple(io["oshape_packed"][1:])
        per_image = self.OUTPUTS[self.output]
        if self.ishape_normal != (32, 32, 3) or int(np.prod(self.oshape_normal)) != per_image[0]:
            raise FpgaUnavailable(f"{manifest['name']}: expected input (N, 32, 32, 3) and {per_image[0]} "
                                  f"output{'s' if per_image[0] > 1 else ''} per image ({self.output}), "
                                  f"not {list(self.oshape_normal)}")
        self.overlay = pynq.Overlay(xclbin, device=device)
        self.ibuf = self.obuf = None
        try:
            self.idma = getattr(self.overlay, manifest.get("input_dma", "idma0"))
            self.odma = getattr(self.overlay, manifest.get("output_dma", "odma0"))
            bank = _bank(self.overlay, manifest)
            spec = {"dtype": "uint8"}
            self.ibuf = _allocate(pynq, spec, bank, (self.batch_size, *self.ishape_packed))
            self.obuf = _allocate(pynq, spec, bank, (self.batch_size, *self.oshape_packed))
        except BaseException:
            self.close()
            raise

    def pack(self, images: np.ndarray) -> np.ndarray:
        folded = images.reshape((len(images), *self.ishape_folded))
        packed = finn_pack(folded, self.ibits)
        return packed.reshape((len(images), *self.ishape_packed))

    def unpack(self, packed: np.ndarray) -> np.ndarray:
        """The outputs of len(packed) images, int64: (N, 1) classes or (N, 10) popcounts."""
        import numpy as np

        n = len(packed)
        folded = finn_unpack(packed.reshape((n, *self.oshape_packed)), self.obits, (n, *self.oshape_folded),
                             signed=self.osigned)
        return folded.reshape((n, *self.OUTPUTS[self.output])).astype(np.int64)

    def run(self, images: np.ndarray) -> np.ndarray:
        """The network's outputs for uint8 images (N, 32, 32, 3), a batch at a time."""
        import numpy as np

        outputs = np.empty((len(images), *self.OUTPUTS[self.output]), dtype=np.int64)
        for start in range(0, len(images), self.batch_size):
            batch = images[start:start + self.batch_size]
            n = len(batch)
            ibuf = self.ibuf[:n]
            np.copyto(ibuf, self.pack(batch))
            ibuf.sync_to_device()
            self.idma.start(self.ibuf, n)
            handle = self.odma.start(self.obuf, n)
            handle.wait()
            obuf = self.obuf[:n]
            obuf.sync_from_device()
            outputs[start:start + n] = self.unpack(np.array(obuf))
        return outputs

    def classify(self, images: np.ndarray) -> np.ndarray:
        """Class indices; from popcounts, the first of the highest (every kernel's tie-break)."""
        import numpy as np

        outputs = self.run(images)
        return outputs.argmax(axis=1) if self.output == "popcounts" else outputs[:, 0]

    def popcounts(self, images: np.ndarray) -> np.ndarray:
        """fc3's popcounts (N, 10), which only a ``popcounts`` build returns."""
        if self.output != "popcounts":
            raise FpgaUnavailable(f"{self.manifest['name']}: the card returns only its top-1 class")
        return self.run(images)

    def close(self) -> None:
        for buf in (self.ibuf, self.obuf):
            if buf is not None:
                buf.freebuffer()
        self.ibuf = self.obuf = None
        if self.overlay is not None:
            self.overlay.free()
            self.overlay = None


# drivers by the manifest's "interface"
DRIVERS = {"xilGzipCompBlock": GzipDriver, Lz77HuffmanDriver.INTERFACE: Lz77HuffmanDriver, "finn-alveo": CnvDriver}


def cnv_output(manifest: dict) -> str:
    """What a CNV overlay's network returns: ``top1`` (the default) or ``popcounts``."""
    output = manifest.get("output", "top1")
    if output not in CnvDriver.OUTPUTS:
        raise FpgaUnavailable(f"{manifest.get('name')}: output {output!r} is not one of "
                              f"{', '.join(CnvDriver.OUTPUTS)}")
    return output


def driver_class(manifest: dict):
    try:
        return DRIVERS[manifest.get("interface")]
    except KeyError:
        raise FpgaUnavailable(f"{manifest.get('name')}: no driver for interface {manifest.get('interface')!r}") from None
