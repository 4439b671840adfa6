"""The FPGA drivers (octoray.kernels.fpga) on the PYNQ emulator: buffers, FINN packing, the
joinable gzip output, card selection by index, one overlay per worker, fallback of `auto`.

No card exists here: these check the drivers at the PYNQ boundary, not on hardware."""

from __future__ import annotations

import os
import re
import threading
import zlib

import numpy as np
import pytest

from conftest import fgzip, run, text_like, tool
from helpers.overlays import popcounts_overlays
from octoray.kernels import AcceleratorError, open_accelerator
from octoray.formats.gzip import FINAL_EMPTY_BLOCK
from octoray.kernels import fpga, fpga_drivers as drivers
from octoray.kernels.fpga import FpgaAccelerator, FpgaUnavailable
from octoray.formats.finn_packing import finn_pack, finn_type, finn_unpack
from octoray.kernels.fpga_emulator import EmulatedPynq


def fake_classes(images: np.ndarray) -> np.ndarray:
    """A stand-in network that depends on every byte and on where it sits in the image."""
    weights = (np.arange(32 * 32 * 3, dtype=np.int64) % 7 + 1).reshape(32, 32, 3)
    return (images.astype(np.int64) * weights).sum(axis=(1, 2, 3)) % 10


@pytest.fixture
def emulator():
    return EmulatedPynq(devices=2, classifier=fake_classes)


@pytest.fixture
def card(emulator):
    acc = FpgaAccelerator(0, pynq_module=emulator, kind="fpga-emulator")
    yield acc
    acc.close()


def inflate(stream: bytes) -> bytes:
    d = zlib.decompressobj(-15)
    out = d.decompress(stream)
    assert d.eof, "the stream does not end with a final block"
    return out


# --- FINN packing ------------------------------------------------------------------------------

def test_finn_packing_puts_element_i_at_bits_i_times_width_little_endian():
    assert finn_pack(np.array([[1, 2, 3]]), 4).tolist() == [[0x21, 0x03]]
    assert finn_pack(np.array([[3, 0, 1, 2]]), 2).tolist() == [[0b10_01_00_11]]
    assert finn_pack(np.array([[5, 1, 7]]), 3).tolist() == [[0b11_001_101, 0b1]]  # 9 bits -> 2 bytes
    assert finn_pack(np.array([[0x1234, 0xABCD]]), 16).tolist() == [[0x34, 0x12, 0xCD, 0xAB]]


def test_finn_packing_of_bits_is_packbits_little_and_of_bytes_is_identity():
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 2, (4, 5, 64))
    assert np.array_equal(finn_pack(bits, 1), np.packbits(bits.astype(np.uint8), axis=-1, bitorder="little"))
    pixels = rng.integers(0, 256, (2, 32, 32, 1, 3), dtype=np.uint8)
    assert np.array_equal(finn_pack(pixels, 8), pixels)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 7, 8, 12, 16])
def test_finn_unpack_inverts_pack(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 2 ** bits, (3, 4, 5))
    packed = finn_pack(codes, bits)
    assert packed.shape == (3, 4, (5 * bits + 7) // 8)
    assert np.array_equal(finn_unpack(packed, bits, codes.shape), codes)


def test_finn_pack_refuses_values_wider_than_the_type():
    with pytest.raises(ValueError):
        finn_pack(np.array([[4]]), 2)


@pytest.mark.parametrize("bits", [2, 5, 11, 16, 32])
def test_finn_unpack_reads_int_types_as_twos_complement(bits):
    rng = np.random.default_rng(bits)
    values = rng.integers(-2 ** (bits - 1), 2 ** (bits - 1), (3, 5, 2))
    values[0, 0] = [-2 ** (bits - 1), 2 ** (bits - 1) - 1]  # both ends of the type
    packed = finn_pack(values % 2 ** bits, bits)  # the two's complement codes
    got = finn_unpack(packed, bits, values.shape, signed=True)
    assert got.dtype == np.int64 and np.array_equal(got, values)


def test_finn_type_names_give_width_and_signedness():
    assert [finn_type(n) for n in ("UINT8", "UINT10", "INT16", "BIPOLAR", "BINARY", "INT32")] == [
        (8, False), (10, False), (16, True), (1, False), (1, False), (32, True)]
    for name in ("FLOAT32", "INT0", "UINT33", "INTX"):
        with pytest.raises(ValueError, match=name):
            finn_type(name)


# --- CNV driver --------------------------------------------------------------------------------

def test_cnv_driver_buffers_batches_and_one_hot_rows(card, emulator):
    images = np.random.default_rng(2).integers(0, 256, (2500, 32, 32, 3), dtype=np.uint8)
    scores = card.cnv_scores(images)
    assert scores.dtype == np.int64 and scores.shape == (2500, 10)
    assert (scores.sum(axis=1) == 1).all()
    assert np.array_equal(scores.argmax(axis=1), fake_classes(images))  # every byte in its place
    driver = card._driver
    assert driver.ibuf.shape == (1024, 32, 32, 3, 1) and driver.ibuf.dtype == np.uint8
    assert driver.obuf.shape == (1024, 1, 1) and driver.obuf.dtype == np.uint8
    assert driver.ibuf.bank == driver.obuf.bank == "HBM0"
    assert emulator.stats["runs:idma0"] == emulator.stats["runs:odma0"] == 3  # 1024 + 1024 + 452


def test_cnv_driver_rejects_what_is_not_a_batch_of_images(card):
    with pytest.raises(ValueError):
        card.cnv_scores(np.zeros((2, 32, 32, 3), dtype=np.float32))
    assert card.cnv_scores(np.zeros((0, 32, 32, 3), dtype=np.uint8)).shape == (0, 10)


def test_emulated_cnv_classes_equal_the_cpu_kernel_on_the_shipped_model():
    from octoray.kernels.cpu import CpuAccelerator

    images = np.random.default_rng(3).integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    images[:4] = 0  # flat images too
    acc = FpgaAccelerator(1, pynq_module=EmulatedPynq(devices=2), kind="fpga-emulator")
    try:
        on_card = acc.cnv_scores(images)
    finally:
        acc.close()
    assert np.array_equal(on_card.argmax(axis=1), CpuAccelerator().cnv_scores(images).argmax(axis=1))


@pytest.mark.parametrize("odt, pe", [(None, None), ("INT16", 1), ("UINT16", 2), ("UINT32", 5)])
def test_a_card_built_to_return_popcounts_gives_them_without_a_fallback(odt, pe, tmp_path, monkeypatch):
    """The shipped manifest-popcounts.json (UINT32, PE 1: what FINN v0.10.1's driver declares
    for that build), and other foldings and widths a build may have."""
    from octoray.kernels.cpu import CpuAccelerator

    monkeypatch.setenv("OCTORAY_OVERLAYS", popcounts_overlays(tmp_path, odt, pe))
    images = np.random.default_rng(4).integers(0, 256, (1030, 32, 32, 3), dtype=np.uint8)
    emulator = EmulatedPynq(devices=1)
    acc = FpgaAccelerator(0, pynq_module=emulator, kind="fpga-emulator", fallback=None)
    try:
        scores, classes = acc.cnv_scores(images, popcounts=True), acc.cnv_classes(images)
        assert acc._driver.obuf.shape == (1024, 10 // (pe or 1), (pe or 1) * int((odt or "UINT32").lstrip("UINT")) // 8)
        assert acc.cnv_scores(images[:0], popcounts=True).shape == (0, 10)
    finally:
        acc.close()
    want = CpuAccelerator().cnv_scores(images, popcounts=True)
    assert scores.dtype == np.int64 and np.array_equal(scores, want)
    assert np.array_equal(classes, want.argmax(axis=1))
    assert emulator.stats["runs:odma0"] == 4  # two calls of 1024 + 6 images, all on the card


@pytest.mark.parametrize("output, normal, why", [
    ("popcounts", (1, 1), "expected input (N, 32, 32, 3) and 10 outputs per image (popcounts), not [1]"),
    ("scores", (1, 10), "output 'scores' is not one of top1, popcounts")])
def test_a_cnv_manifest_whose_output_does_not_fit_is_refused_with_a_reason(output, normal, why, tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv("OCTORAY_OVERLAYS", popcounts_overlays(tmp_path, output=output, normal=normal))
    acc = FpgaAccelerator(0, pynq_module=EmulatedPynq(devices=1), kind="fpga-emulator")
    try:
        with pytest.raises(FpgaUnavailable, match=re.escape(why)):
            acc.cnv_classes(np.zeros((1, 32, 32, 3), dtype=np.uint8))
    finally:
        acc.close()


# --- gzip driver -------------------------------------------------------------------------------

def test_gzip_driver_buffers_follow_the_manifest(card):
    card.deflate(b"x" * 1000, 6, False)
    b = card._driver.buffers
    assert b["in"].shape == (8 << 20,) and b["in"].dtype == np.uint8
    assert b["out"].shape == ((16 << 20) + (64 << 10),) and b["out"].dtype == np.uint8
    assert b["compressd_size"].shape == (512,) and b["compressd_size"].dtype == np.uint32
    assert b["checksumData"].shape == (1,) and b["checksumData"].dtype == np.uint32
    assert {buf.bank for buf in b.values()} == {"HBM0"}


def test_chunks_join_into_one_deflate_stream_and_the_last_one_ends_it(card):
    rng = np.random.default_rng(4)
    chunks = [text_like(300_000, seed=1), rng.bytes(200_000), b"", bytes(100_000), b"tail\n"]
    parts = [card.deflate(c, 6, False) for c in chunks[:-1]] + [card.deflate(chunks[-1], 6, True)]
    assert parts[2] == b""  # an empty chunk adds nothing
    assert all(not p.endswith(FINAL_EMPTY_BLOCK) for p in parts[:-1]) and parts[-1].endswith(FINAL_EMPTY_BLOCK)
    assert inflate(b"".join(parts)) == b"".join(chunks)
    assert inflate(card.deflate(b"", 6, True)) == b""


def test_a_chunk_above_the_kernels_limit_runs_in_pieces(card, emulator):
    data = text_like(9 << 20, seed=2)
    assert inflate(card.deflate(data, 1, True)) == data
    assert emulator.stats["runs:xilGzipCompBlock_1"] == 2


def test_gzip_members_from_the_card_pass_gzip_t(card, tmp_path, gzip_bin):
    from octoray.formats.gzip import crc32

    data = text_like(700_000, seed=3)
    body = card.deflate(data[:400_000], 6, False) + card.deflate(data[400_000:], 6, True)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    trailer = crc32(data).to_bytes(4, "little") + len(data).to_bytes(4, "little")  # the host's CRC
    path = tmp_path / "x.gz"
    path.write_bytes(header + body + trailer)
    run([gzip_bin, "-t", str(path)], check=True)
    assert run([gzip_bin, "-dc", str(path)], check=True).stdout == data


# --- gzip_hbm driver (the 2019.2 xilLz77Compress + xilHuffmanKernel pair) ----------------------

MiB = 1 << 20
HBM = {"gzip": "gzip_hbm_u50"}


@pytest.fixture
def hbm_card(emulator):
    acc = FpgaAccelerator(0, pynq_module=emulator, kind="fpga-emulator", overlays=HBM)
    yield acc
    acc.close()


def test_hbm_driver_buffers_follow_the_manifest(hbm_card):
    hbm_card.deflate(b"x" * 1000, 6, False)
    driver = hbm_card._driver
    assert isinstance(driver, drivers.Lz77HuffmanDriver) and driver.block == MiB and driver.max_input == 8 * MiB
    b = driver.buffers
    expected = {"in": (8 * MiB, np.uint8), "lz77_out": (32 * MiB, np.uint8), "out": (16 * MiB, np.uint8),
                "compressd_size": (8, np.uint32), "in_block_size": (8, np.uint32),
                "dyn_ltree_freq": (8 * 1024, np.uint32), "dyn_dtree_freq": (8 * 64, np.uint32)}
    manifest = fpga.load_manifest("gzip_hbm_u50")
    for name, (length, dtype) in expected.items():
        assert b[name].shape == (length,) == tuple(manifest["buffers"][name]["shape"]) and b[name].dtype == dtype
    assert {buf.bank for buf in b.values()} == {"HBM0"}


def test_hbm_blocks_join_in_order_with_a_last_partial_block(hbm_card, emulator):
    data = text_like(3 * MiB + 12345, seed=6)
    body = hbm_card.deflate(data, 6, False)
    driver = hbm_card._driver
    assert driver.stats == {"runs": 1, "card_blocks": 4, "stored_blocks": 0}
    lz77, huffman = (emulator.Device.devices[0].loaded.kernels[k] for k in ("xilLz77Compress_1", "xilHuffmanKernel_1"))
    assert lz77.register_map.input_size == huffman.register_map.input_size == len(data)
    assert lz77.register_map.block_size_in_kb == 1024
    assert driver.buffers["in_block_size"].tolist() == [MiB, MiB, MiB, 12345, 0, 0, 0, 0]
    # each block on its own, byte-aligned, in input order: block b inflates to the b-th MiB
    d = zlib.decompressobj(-15)
    assert d.decompress(body) == data and not d.eof
    assert body.endswith(b"\x00\x00\xff\xff") and inflate(body + FINAL_EMPTY_BLOCK) == data


def test_hbm_blocks_that_do_not_shrink_are_stored_by_the_host(hbm_card):
    rng = np.random.default_rng(7)
    noise = rng.bytes(MiB)
    data = text_like(MiB, seed=7) + noise + text_like(MiB, seed=8) + text_like(MiB, seed=9) + rng.bytes(100)
    body = hbm_card.deflate(data, 6, True)
    assert inflate(body) == data
    stats = hbm_card._driver.stats
    # the noise block (larger than its slot on the card), the block after it (its start may be
    # overwritten) and the 100-byte tail (not encoded) come from the host
    assert stats == {"runs": 1, "card_blocks": 2, "stored_blocks": 3}
    assert drivers.stored_blocks(noise) in body and drivers.stored_blocks(data[-100:]) in body
    assert drivers.stored_blocks(data[2 * MiB:3 * MiB]) in body


def test_stored_blocks_are_non_final_and_at_most_65535_bytes():
    stream = drivers.stored_blocks(bytes(range(256)) * 600)  # 153600 bytes: 3 blocks
    assert stream[:5] == b"\x00\xff\xff\x00\x00" and len(stream) == 153600 + 3 * 5
    assert inflate(stream + FINAL_EMPTY_BLOCK) == bytes(range(256)) * 600
    assert drivers.stored_blocks(b"") == b""


def test_hbm_empty_input_runs_nothing(hbm_card, emulator):
    assert hbm_card.deflate(b"", 6, False) == b""
    assert hbm_card.deflate(b"", 6, True) == FINAL_EMPTY_BLOCK
    assert emulator.stats["runs:xilLz77Compress_1"] == emulator.stats["runs:xilHuffmanKernel_1"] == 0


def test_hbm_input_over_8_mib_runs_in_pieces(hbm_card, emulator):
    data = text_like(17 * MiB + 5, seed=10)
    assert inflate(hbm_card.deflate(data, 1, True)) == data
    assert emulator.stats["runs:xilLz77Compress_1"] == emulator.stats["runs:xilHuffmanKernel_1"] == 3
    assert hbm_card._driver.stats == {"runs": 3, "card_blocks": 17, "stored_blocks": 1}  # the 5-byte tail


def test_hbm_gzip_member_passes_gzip_t_with_the_hosts_crc(hbm_card, tmp_path, gzip_bin):
    import gzip

    from octoray.formats.gzip import crc32

    rng = np.random.default_rng(11)
    data = text_like(2 * MiB + 777, seed=12) + rng.bytes(MiB + 3) + text_like(300_000, seed=13)
    body = hbm_card.deflate(data[:MiB + 5], 6, False) + hbm_card.deflate(data[MiB + 5:], 6, True)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    member = header + body + crc32(data).to_bytes(4, "little") + len(data).to_bytes(4, "little")
    (tmp_path / "x.gz").write_bytes(member)
    run([gzip_bin, "-t", str(tmp_path / "x.gz")], check=True)
    assert run([gzip_bin, "-dc", str(tmp_path / "x.gz")], check=True).stdout == data
    assert gzip.decompress(member) == data
    bad = header + body + (crc32(data) ^ 1).to_bytes(4, "little") + len(data).to_bytes(4, "little")
    with pytest.raises(gzip.BadGzipFile):  # the trailer's CRC is checked: the host's, not the card's
        gzip.decompress(bad)


def test_the_gzip_driver_is_chosen_by_the_manifests_interface(emulator):
    for overlays, driver in ((None, drivers.GzipDriver), (HBM, drivers.Lz77HuffmanDriver)):
        acc = FpgaAccelerator(0, pynq_module=emulator, kind="fpga-emulator", overlays=overlays)
        try:
            acc.deflate(b"abc", 6, True)
            assert type(acc._driver) is driver
        finally:
            acc.close()
    manifest = dict(fpga.load_manifest("gzip_hbm_u50"), interface="xilSomethingElse")
    with pytest.raises(FpgaUnavailable, match="no driver for interface 'xilSomethingElse'"):
        drivers.driver_class(manifest)
    with pytest.raises(FpgaUnavailable, match="not supported"):
        drivers.Lz77HuffmanDriver(emulator, None, dict(manifest), "gzip_hbm_u50.xclbin")


@pytest.mark.parametrize("xclbins, chosen", [(["gzip_u50", "gzip_hbm_u50"], "gzip_u50"),
                                             (["gzip_hbm_u50"], "gzip_hbm_u50"), (["gzip_u50"], "gzip_u50")])
def test_auto_prefers_gzip_u50_and_takes_gzip_hbm_u50_when_only_it_is_there(xclbins, chosen, monkeypatch, tmp_path):
    monkeypatch.setattr(fpga, "pynq_installed", lambda: True)
    for name in xclbins:
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}.xclbin").write_bytes(b"xclbin2\0")
    monkeypatch.setenv("OCTORAY_OVERLAYS", str(tmp_path))
    emulator = EmulatedPynq(devices=1, classifier=fake_classes)
    emulator.emulated = False  # as strict as real pynq: only overlays whose xclbin exists
    monkeypatch.setattr(fpga, "import_pynq", lambda: emulator)
    acc = open_accelerator("auto", 0)
    try:
        assert acc.name == f"fpga:0 {chosen} (cnv: cpu)"
        data = text_like(1_500_000, seed=14)
        assert inflate(acc.deflate(data, 6, True)) == data
    finally:
        acc.close()


# --- cards, overlays, threads ------------------------------------------------------------------

def test_the_card_is_chosen_by_index_not_by_name():
    emulator = EmulatedPynq(devices=3, classifier=fake_classes)
    cards = emulator_devices(emulator)
    assert len({c.name for c in cards}) == 1  # same shell name: only the index tells them apart
    acc = FpgaAccelerator(2, pynq_module=emulator, kind="fpga-emulator")
    try:
        acc.deflate(b"abc", 6, True)
        assert acc.device is cards[2] and acc.name.startswith("fpga-emulator:2 ")
        assert [c.loaded is not None for c in cards] == [False, False, True]
    finally:
        acc.close()
    with pytest.raises(FpgaUnavailable, match=r"no card 3 \(3 found\)"):
        FpgaAccelerator(3, pynq_module=emulator)


def emulator_devices(emulator):
    result = []
    thread = threading.Thread(target=lambda: result.extend(_probe(emulator)))
    thread.start()
    thread.join()
    return result


def _probe(emulator):
    import asyncio

    asyncio.set_event_loop(asyncio.new_event_loop())
    return emulator.Device.devices


def test_the_device_index_comes_from_octoray_device(monkeypatch):
    monkeypatch.setenv("OCTORAY_DEVICE", "1")
    acc = FpgaAccelerator(pynq_module=EmulatedPynq(devices=2), kind="fpga-emulator")
    assert acc.device_index == 1
    acc.close()
    monkeypatch.setenv("OCTORAY_DEVICE", "one")
    with pytest.raises(FpgaUnavailable, match="not a card index"):
        FpgaAccelerator(pynq_module=EmulatedPynq(devices=2))


def test_the_overlay_is_opened_once_and_everything_is_freed_at_close(emulator):
    acc = FpgaAccelerator(0, pynq_module=emulator, kind="fpga-emulator")
    workers = [threading.Thread(target=lambda: [acc.deflate(b"data" * 5000, 6, False) for _ in range(10)])
               for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert emulator.stats["overlays_loaded"] == 1 and acc.overlays_opened == 1
    assert emulator.stats["runs:xilGzipCompBlock_1"] == 40
    acc.cnv_scores(np.zeros((3, 32, 32, 3), dtype=np.uint8))  # the card holds one xclbin: reload
    acc.cnv_scores(np.zeros((3, 32, 32, 3), dtype=np.uint8))
    assert emulator.stats["overlays_loaded"] == 2 and emulator.stats["overlays_freed"] == 1
    acc.close()
    assert emulator.stats["overlays_freed"] == 2
    assert emulator.stats["buffers_freed"] == emulator.stats["buffers_allocated"] == 6
    with pytest.raises(RuntimeError, match="closed"):
        acc.deflate(b"x", 6, True)


def test_pynq_calls_run_on_a_thread_with_an_event_loop(emulator):
    errors = []

    def bare_thread():
        try:
            emulator.Device.devices
        except RuntimeError as error:
            errors.append(str(error))
        # the accelerator opens its card on its own thread, from any thread
        acc = FpgaAccelerator(1, pynq_module=emulator, kind="fpga-emulator")
        acc.deflate(b"abc", 6, True)
        acc.close()

    thread = threading.Thread(target=bare_thread, name="dask-worker-thread")
    thread.start()
    thread.join()
    assert errors and "no current event loop" in errors[0]
    assert emulator.stats["overlays_loaded"] == 1


# --- open_accelerator: fpga, fpga-emulator, auto -----------------------------------------------

def test_fpga_emulator_kind_runs_the_drivers_on_emulated_cards(monkeypatch):
    monkeypatch.setattr("octoray.kernels.fpga_emulator._shared", EmulatedPynq(devices=2, classifier=fake_classes))
    acc = open_accelerator("fpga-emulator", 1)
    try:
        assert acc.name == "fpga-emulator:1 gzip_u50+cnv_w1a1_u50" and acc.fallback_reason is None
        assert inflate(acc.deflate(b"hello" * 100, 6, True)) == b"hello" * 100
    finally:
        acc.close()
    with pytest.raises(AcceleratorError, match=r"no card 2 \(2 found\)"):
        open_accelerator("fpga-emulator", 2)


def test_auto_without_pynq_is_the_cpu_and_says_why(monkeypatch):
    monkeypatch.setattr(fpga, "pynq_installed", lambda: False)
    acc = open_accelerator("auto")
    assert acc.fallback_reason == "pynq not installed"
    assert acc.name == "cpu (no FPGA: pynq not installed)"
    with pytest.raises(AcceleratorError, match="pynq not installed"):
        open_accelerator("fpga")


@pytest.fixture
def pynq_without_xrt_files(monkeypatch, tmp_path):
    """pynq "installed" (the emulator standing in for it, as strict as real pynq about xclbin
    files) and an overlays folder holding only the gzip xclbin."""
    monkeypatch.setattr(fpga, "pynq_installed", lambda: True)
    (tmp_path / "gzip_u50").mkdir()
    (tmp_path / "gzip_u50" / "gzip_u50.xclbin").write_bytes(b"xclbin2\0")
    monkeypatch.setenv("OCTORAY_OVERLAYS", str(tmp_path))

    def install(devices: int):
        emulator = EmulatedPynq(devices=devices, classifier=fake_classes)
        emulator.emulated = False
        monkeypatch.setattr(fpga, "import_pynq", lambda: emulator)
        return emulator
    return install


def test_auto_without_a_card_is_the_cpu(pynq_without_xrt_files):
    pynq_without_xrt_files(0)
    acc = open_accelerator("auto", 0)
    assert acc.name.startswith("cpu (no FPGA: no card found")


def test_auto_with_a_card_and_one_xclbin_uses_the_card_for_it_and_the_cpu_for_the_rest(pynq_without_xrt_files):
    emulator = pynq_without_xrt_files(2)
    acc = open_accelerator("auto", 1)
    try:
        assert acc.name == "fpga:1 gzip_u50 (cnv: cpu)"
        assert "no cnv_w1a1_u50.xclbin" in acc.fallback_reason
        assert inflate(acc.deflate(b"abc" * 1000, 6, True)) == b"abc" * 1000
        assert emulator.stats["runs:xilGzipCompBlock_1"] == 1
        assert acc._fallback_for("cnv") is acc.fallback
    finally:
        acc.close()
    assert open_accelerator("auto", 2).name == "cpu (no FPGA: no card 2 (2 found))"


def test_auto_without_any_xclbin_is_the_cpu(monkeypatch, tmp_path):
    monkeypatch.setattr(fpga, "pynq_installed", lambda: True)
    monkeypatch.setattr(fpga, "overlay_dirs", lambda: [fpga.Path(__file__).resolve().parent.parent / "overlays"])
    acc = open_accelerator("auto")
    assert acc.name.startswith("cpu (no FPGA: no overlay xclbin (gzip_u50/gzip_hbm_u50, cnv_w1a1_u50")


def test_auto_when_pynq_cannot_load_xrt(monkeypatch, pynq_without_xrt_files):
    def broken():
        raise FpgaUnavailable("pynq cannot load XRT (libxrt_core.so: cannot open shared object file)")
    monkeypatch.setattr(fpga, "import_pynq", broken)
    assert open_accelerator("auto").name.startswith("cpu (no FPGA: pynq cannot load XRT")


# --- the tools ---------------------------------------------------------------------------------

def emulator_env(**extra):
    return dict(os.environ, OCTORAY_ACCELERATOR="fpga-emulator", **extra)


@pytest.mark.parametrize("kind", ["random", "text", "empty"])
def test_fgzip_on_the_emulator_round_trips_through_gzip(kind, tmp_path, gzip_bin):
    data = {"random": np.random.default_rng(5).bytes(3_000_000), "text": text_like(2_500_000, seed=4),
            "empty": b""}[kind]
    out = fgzip("-b", "512", input=data, env=emulator_env(OCTORAY_DEVICE="1"), check=True)
    (tmp_path / "x.gz").write_bytes(out.stdout)
    run([gzip_bin, "-t", str(tmp_path / "x.gz")], check=True)
    assert run([gzip_bin, "-dc"], input=out.stdout, check=True).stdout == data


def hbm_only_overlays(tmp_path):
    """An overlays folder with only gzip_hbm_u50's xclbin (any file: the emulator knows it by name)."""
    (tmp_path / "gzip_hbm_u50").mkdir(parents=True)
    (tmp_path / "gzip_hbm_u50" / "gzip_hbm_u50.xclbin").write_bytes(b"")
    return str(tmp_path)


def test_fgzip_on_the_emulated_gzip_hbm_overlay_round_trips_through_gzip(tmp_path, gzip_bin):
    rng = np.random.default_rng(15)
    data = text_like(2_200_000, seed=16) + rng.bytes(1_200_000) + text_like(900_000, seed=17)
    source = tmp_path / "f"
    source.write_bytes(data)
    env = emulator_env(OCTORAY_DEVICE="1", OCTORAY_OVERLAYS=hbm_only_overlays(tmp_path / "ov"))
    status = run([*tool("octoray"), "status"], env=env, check=True).stdout.decode()
    assert "fpga-emulator:1 gzip_hbm_u50+cnv_w1a1_u50" in status
    with open(source, "rb") as stdin:
        out = run([*tool("fgzip"), "-b", "4096"], stdin=stdin, env=env, check=True).stdout
    (tmp_path / "x.gz").write_bytes(out)
    run([gzip_bin, "-t", str(tmp_path / "x.gz")], check=True)
    assert run([gzip_bin, "-dc"], input=out, check=True).stdout == data


def test_octoray_status_names_the_emulated_card():
    result = run([*tool("octoray"), "status"], env=emulator_env(OCTORAY_DEVICE="1"), check=True)
    assert "fpga-emulator:1 gzip_u50+cnv_w1a1_u50" in result.stdout.decode()


@pytest.mark.parametrize("argv", [["fclassify", "IMAGE"], ["octoray", "status"], ["fgzip", "-c", "IMAGE"]])
def test_asking_for_an_fpga_without_pynq_is_a_plain_error(argv, tmp_path):
    from PIL import Image

    image = tmp_path / "one.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    program = argv[0]
    argv = [*tool(program), *(str(image) if a == "IMAGE" else a for a in argv[1:])]
    result = run(argv, env=dict(os.environ, OCTORAY_ACCELERATOR="fpga"))
    assert result.returncode == 1
    assert program == "fgzip" or result.stdout == b""  # fgzip -c has begun its gzip header
    assert result.stderr.decode() == f"{program}: accelerator 'fpga': pynq not installed (No module named 'pynq')\n"
