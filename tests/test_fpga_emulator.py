"""The PYNQ emulator refuses what an Alveo card would refuse, hang on or silently get wrong, so
that driver bugs show up in tests; and its gzip kernel behaves like Vitis' xilGzipCompBlock."""

from __future__ import annotations

import asyncio
import zlib

import numpy as np
import pytest

from octoray.kernels.fpga import load_manifest
from octoray.kernels.fpga_emulator import EmulatedPynq, EmulatorError

GZIP = load_manifest("gzip_u50")
CNV = load_manifest("cnv_w1a1_u50")


@pytest.fixture
def pynq():
    asyncio.set_event_loop(asyncio.new_event_loop())  # as PYNQ needs in the calling thread
    emulator = EmulatedPynq(devices=2, classifier=lambda images: images[:, 0, 0, 0] % 10)
    yield emulator
    asyncio.get_event_loop().close()
    asyncio.set_event_loop(None)


def gzip_buffers(pynq, ol, **override):
    specs = {name: dict(spec) for name, spec in GZIP["buffers"].items()}
    for name, spec in override.items():
        specs[name].update(spec)
    return {name: pynq.allocate(tuple(s["shape"]), s["dtype"], target=ol.HBM0) for name, s in specs.items()}


def run_gzip(ol, b, n, checksum_type=True):
    ol.xilGzipCompBlock_1.call(b["in"], b["out"], b["compressd_size"], b["checksumData"], n, checksum_type)


def load(pynq, manifest, card=0):
    return pynq.Overlay(f"/nowhere/{manifest['xclbin']}", device=pynq.Device.devices[card])


def test_gzip_kernel_writes_open_blocks_and_the_crc_register(pynq):
    ol = load(pynq, GZIP)
    b = gzip_buffers(pynq, ol)
    data = (b"octoray " * 10000)[:70000]
    b["in"][:len(data)] = np.frombuffer(data, np.uint8)
    b["in"].sync_to_device()
    b["checksumData"][0] = 0xFFFFFFFF
    b["checksumData"].sync_to_device()
    run_gzip(ol, b, len(data))
    b["compressd_size"].sync_from_device()
    b["checksumData"].sync_from_device()
    size = int(b["compressd_size"][0])
    body = b["out"][:size]
    body.sync_from_device()
    stream = body.tobytes()
    assert stream.endswith(b"\x00\x00\xff\xff")  # byte-aligned, no final block: joinable
    d = zlib.decompressobj(-15)
    assert d.decompress(stream) == data and not d.eof
    assert ~int(b["checksumData"][0]) & 0xFFFFFFFF == zlib.crc32(data)
    assert ol.xilGzipCompBlock_1.register_map.input_size == len(data)


def test_a_buffer_not_synced_to_the_device_is_refused(pynq):
    ol = load(pynq, GZIP)
    b = gzip_buffers(pynq, ol)
    b["checksumData"].sync_to_device()
    b["in"][:5] = np.frombuffer(b"hello", np.uint8)  # no sync_to_device
    with pytest.raises(EmulatorError, match="not synced"):
        run_gzip(ol, b, 5)


def test_results_are_not_on_the_host_before_sync_from_device(pynq):
    ol = load(pynq, GZIP)
    b = gzip_buffers(pynq, ol)
    for buf in b.values():
        buf.sync_to_device()
    run_gzip(ol, b, 100)
    assert b["compressd_size"][0] == 0
    b["compressd_size"].sync_from_device()
    assert b["compressd_size"][0] > 0


@pytest.mark.parametrize("port, spec", [("in", {"dtype": "uint32", "shape": [1 << 21]}),
                                        ("compressd_size", {"shape": [4]}),
                                        ("checksumData", {"dtype": "uint64"})])
def test_buffers_of_other_shapes_or_types_than_the_overlays_ports_are_refused(pynq, port, spec):
    ol = load(pynq, GZIP)
    b = gzip_buffers(pynq, ol, **{port: spec})
    for buf in b.values():
        buf.sync_to_device()
    with pytest.raises(EmulatorError, match=port):
        run_gzip(ol, b, 100)


def test_sizes_beyond_the_manifests_limits_are_refused(pynq):
    ol = load(pynq, GZIP)
    b = gzip_buffers(pynq, ol)
    for buf in b.values():
        buf.sync_to_device()
    with pytest.raises(EmulatorError, match="input_size"):
        run_gzip(ol, b, GZIP["max_input_bytes"] + 1)
    with pytest.raises(EmulatorError, match="input_size"):
        run_gzip(ol, b, 0)
    with pytest.raises(EmulatorError, match="6 arguments"):
        ol.xilGzipCompBlock_1.call(b["in"], b["out"], 100)


def test_buffers_of_another_card_or_bank_or_freed_are_refused(pynq):
    ol = load(pynq, GZIP, card=0)
    other = load(pynq, GZIP, card=1)
    for target, message in ((other.HBM0, "card 1"), (ol.HBM5, "HBM5")):
        b = gzip_buffers(pynq, ol)
        b["in"] = pynq.allocate(tuple(GZIP["buffers"]["in"]["shape"]), np.uint8, target=target)
        for buf in b.values():
            buf.sync_to_device()
        with pytest.raises(EmulatorError, match=message):
            run_gzip(ol, b, 100)
    b = gzip_buffers(pynq, ol)
    b["out"].freebuffer()
    with pytest.raises(EmulatorError, match="freed"):
        run_gzip(ol, b, 100)
    with pytest.raises(EmulatorError, match="freed"):
        b["out"].sync_from_device()


def test_loading_another_xclbin_reprograms_the_card(pynq):
    gz = load(pynq, GZIP)
    cnv = load(pynq, CNV)
    assert pynq.Device.devices[0].loaded is cnv
    b = gzip_buffers(pynq, gz)
    with pytest.raises(EmulatorError, match="reprogrammed"):
        run_gzip(gz, b, 100)
    cnv.free()
    with pytest.raises(EmulatorError, match="freed"):
        cnv.idma0.start(pynq.allocate((4, 32, 32, 3, 1), np.uint8, target=cnv.HBM0), 4)


def test_unknown_xclbins_and_other_shells_are_refused(pynq):
    with pytest.raises(EmulatorError, match="not an xclbin"):
        pynq.Overlay("/x/other.xclbin", device=pynq.Device.devices[0])
    strange = EmulatedPynq(devices=1, shell="xilinx_u250_gen3x16_xdma_4_1_202210_1")
    with pytest.raises(RuntimeError, match="built for xilinx_u50"):
        strange.Overlay("gzip_u50.xclbin")


def test_probing_cards_needs_an_event_loop_in_the_thread():
    import threading

    errors = []
    emulator = EmulatedPynq(devices=1)

    def probe():
        try:
            emulator.Device.devices
        except RuntimeError as error:
            errors.append(error)

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    assert "There is no current event loop" in str(errors[0])


def finn_buffers(pynq, ol, n):
    io = CNV["io_shape"]
    ibuf = pynq.allocate((n, *io["ishape_packed"][1:]), np.uint8, target=ol.HBM0)
    obuf = pynq.allocate((n, *io["oshape_packed"][1:]), np.uint8, target=ol.HBM0)
    return ibuf, obuf


def test_finn_dmas_classify_packed_images(pynq):
    ol = load(pynq, CNV)
    ibuf, obuf = finn_buffers(pynq, ol, 8)
    ibuf[:, 0, 0, 0, 0] = np.arange(8) + 3
    ibuf.sync_to_device()
    ol.idma0.start(ibuf, 8)
    ol.odma0.start(obuf, 8).wait()
    obuf.sync_from_device()
    assert obuf.reshape(-1).tolist() == [(i + 3) % 10 for i in range(8)]


def test_finn_dma_misuse_is_refused(pynq):
    ol = load(pynq, CNV)
    ibuf, obuf = finn_buffers(pynq, ol, 8)
    ibuf.sync_to_device()
    with pytest.raises(EmulatorError, match="would hang"):
        ol.odma0.start(obuf, 8).wait()  # no input DMA
    with pytest.raises(EmulatorError, match="numReps"):
        ol.idma0.start(ibuf, CNV["batch_size"] + 1)
    with pytest.raises(EmulatorError, match="past"):
        ol.idma0.start(ibuf, 9)  # more images than the buffer holds
    ol.idma0.start(ibuf, 4)
    with pytest.raises(EmulatorError, match="8 outputs expected"):
        ol.odma0.start(obuf, 8).wait()
    with pytest.raises(EmulatorError, match="uint8"):
        ol.idma0.start(pynq.allocate((8, 32, 32, 3, 1), np.float32, target=ol.HBM0), 8)


# --- the 2019.2 gzip_hbm pair -------------------------------------------------------------------

HBM = load_manifest("gzip_hbm_u50")
MiB = 1 << 20


def hbm_buffers(pynq, ol):
    return {name: pynq.allocate(tuple(s["shape"]), s["dtype"], target=ol.HBM0) for name, s in HBM["buffers"].items()}


def hbm_input(b, data):
    """As the library's host: the input and each block's length (1 MiB, the last one the rest)."""
    b["in"][:len(data)] = np.frombuffer(data, np.uint8)
    b["in"].sync_to_device()
    lengths = [min(MiB, len(data) - s) for s in range(0, len(data), MiB)]
    b["in_block_size"][:] = 0
    b["in_block_size"][:len(lengths)] = lengths
    b["in_block_size"].sync_to_device()
    return lengths


def run_lz77(ol, b, n, kb=1024):
    ol.xilLz77Compress_1.call(b["in"], b["lz77_out"], b["compressd_size"], b["in_block_size"],
                              b["dyn_ltree_freq"], b["dyn_dtree_freq"], kb, n)


def run_huffman(ol, b, n, sizes="compressd_size", lengths="in_block_size"):
    ol.xilHuffmanKernel_1.call(b["lz77_out"], b["dyn_ltree_freq"], b["dyn_dtree_freq"], b["out"],
                               b[sizes], b[lengths], 1024, n)


def block_outputs(b, count):
    b["compressd_size"].sync_from_device()
    sizes = [int(s) for s in b["compressd_size"][:count]]
    out = []
    for i, size in enumerate(sizes):
        view = b["out"][i * MiB:i * MiB + size]
        view.sync_from_device()
        out.append(view.tobytes())
    return sizes, out


def test_hbm_pair_writes_one_open_block_per_mib_slot_with_its_size(pynq):
    from conftest import text_like

    ol = load(pynq, HBM)
    b = hbm_buffers(pynq, ol)
    data = text_like(2 * MiB + 5000, seed=21)
    lengths = hbm_input(b, data)
    run_lz77(ol, b, len(data))
    b["compressd_size"].sync_from_device()
    assert b["compressd_size"][:3].tolist() == [4 * n for n in lengths]  # 32-bit tokens, a literal each
    tokens = b["lz77_out"][4 * MiB:4 * MiB + 16]
    tokens.sync_from_device()
    assert tokens.view("<u4").tolist() == list(data[MiB:MiB + 4])  # block 1 at 4 MiB: literal, length 0
    run_huffman(ol, b, len(data))
    sizes, blocks = block_outputs(b, 3)
    assert all(0 < s < n for s, n in zip(sizes, lengths))
    for i, block in enumerate(blocks):  # each block alone: non-final, sync flush, no dictionary
        assert block.endswith(b"\x00\x00\xff\xff")
        d = zlib.decompressobj(-15)
        assert d.decompress(block) == data[i * MiB:(i + 1) * MiB] and not d.eof
    assert ol.xilHuffmanKernel_1.register_map.input_size == len(data)
    assert ol.xilHuffmanKernel_1.signature.startswith("xilHuffmanKernel_1(in, dyn_ltree_freq, dyn_dtree_freq, out, ")


def test_an_incompressible_block_overruns_its_slot_and_the_librarys_plain_join_breaks(pynq):
    from conftest import text_like

    ol = load(pynq, HBM)
    b = hbm_buffers(pynq, ol)
    noise = np.random.default_rng(22).bytes(MiB)
    data = noise + text_like(MiB, seed=23) + b"tail" * 10  # the last block is under 128 bytes
    hbm_input(b, data)
    run_lz77(ol, b, len(data))
    run_huffman(ol, b, len(data))
    sizes, blocks = block_outputs(b, 3)
    assert sizes[0] > MiB  # larger than its input: runs into block 1's slot
    assert sizes[2] == 40  # not encoded: the input size comes back, nothing is written
    joined = b"".join(blocks) + b"\x01\x00\x00\xff\xff"  # what the 2019.2 host writes
    d = zlib.decompressobj(-15)
    try:
        assert d.decompress(joined) != data
    except zlib.error:
        pass


def test_hbm_kernels_refuse_what_the_card_would_get_wrong(pynq):
    ol = load(pynq, HBM)
    b = hbm_buffers(pynq, ol)
    data = b"abc" * 1000
    hbm_input(b, data)
    with pytest.raises(EmulatorError, match="not the ones an xilLz77Compress run just wrote"):
        run_huffman(ol, b, len(data))  # no LZ77 run before it
    with pytest.raises(EmulatorError, match="block_size_in_kb=512"):
        run_lz77(ol, b, len(data), kb=512)
    run_lz77(ol, b, len(data))
    with pytest.raises(EmulatorError, match="not the ones"):  # the size buffers swapped
        run_huffman(ol, b, len(data), sizes="in_block_size", lengths="compressd_size")
    run_lz77(ol, b, len(data))
    run_huffman(ol, b, len(data))
    with pytest.raises(EmulatorError, match="not the ones"):  # the sizes now hold the deflate counts
        run_huffman(ol, b, len(data))
    b["in_block_size"][0] = 7  # not synced
    with pytest.raises(EmulatorError, match="not synced"):
        run_lz77(ol, b, len(data))
    b["in_block_size"][0] = MiB + 1
    b["in_block_size"].sync_to_device()
    with pytest.raises(EmulatorError, match="outside 1..1048576"):
        run_lz77(ol, b, len(data))
    with pytest.raises(EmulatorError, match="input_size=8388609"):
        run_lz77(ol, b, 8 * MiB + 1)
