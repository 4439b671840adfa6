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
        cnv.idma0.start(pynq.allocate((4, 32, 32, 1, 3), np.uint8, target=cnv.HBM0), 4)


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
        ol.idma0.start(pynq.allocate((8, 32, 32, 1, 3), np.float32, target=ol.HBM0), 8)
