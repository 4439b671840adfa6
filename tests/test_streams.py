"""Pipes and files: full chunks however a pipe delivers them, whole writes, write errors
carried back from the writer thread."""

from __future__ import annotations

import os
import threading

import pytest

from octoray.streams import BackgroundWriter, read_chunks, read_full_bytes


def feed_in_dribbles(w: int, payload: bytes, piece: int) -> threading.Thread:
    def feed():
        for i in range(0, len(payload), piece):
            os.write(w, payload[i:i + piece])
        os.close(w)

    thread = threading.Thread(target=feed)
    thread.start()
    return thread


@pytest.mark.parametrize("total", [0, 1, 65_536, 300_001])
def test_chunks_are_full_sized_whatever_the_pipe_delivers(total):
    r, w = os.pipe()
    payload = os.urandom(total)
    feeder = feed_in_dribbles(w, payload, 7_001)
    chunks = [(bytes(chunk), last) for chunk, last in read_chunks(r, 65_536)]
    feeder.join()
    os.close(r)
    assert b"".join(c for c, _ in chunks) == payload
    assert all(len(c) == 65_536 for c, _ in chunks[:-1])
    assert [last for _, last in chunks] == [False] * (len(chunks) - 1) + [True] * bool(chunks)


@pytest.mark.parametrize("total", [0, 5, 65_536, 200_000])
def test_full_reads_as_bytes_wait_for_the_size_or_the_end(total):
    r, w = os.pipe()
    payload = os.urandom(total)
    feeder = feed_in_dribbles(w, payload, 3_001)
    pieces = list(iter(lambda: read_full_bytes(r, 65_536), b""))
    feeder.join()
    os.close(r)
    assert b"".join(pieces) == payload
    assert all(len(p) == 65_536 for p in pieces[:-1]) and all(isinstance(p, bytes) for p in pieces)


def test_a_small_output_is_written_at_close_without_a_thread():
    r, w = os.pipe()
    writer = BackgroundWriter(w)
    writer.write(b"small")
    assert writer._thread is None
    writer.close()
    os.close(w)
    assert os.read(r, 100) == b"small"
    os.close(r)


def test_a_large_output_arrives_whole_and_in_order():
    r, w = os.pipe()
    pieces = [os.urandom(50_000) for _ in range(20)]
    got = bytearray()

    def drain():
        for piece in iter(lambda: os.read(r, 1 << 16), b""):
            got.extend(piece)

    reader = threading.Thread(target=drain)
    reader.start()
    writer = BackgroundWriter(w)
    for piece in pieces:
        writer.write(piece)
    assert writer._thread is not None
    writer.close()
    os.close(w)
    reader.join()
    os.close(r)
    assert bytes(got) == b"".join(pieces)


def test_a_write_error_on_the_thread_is_raised_to_the_producer():
    r, w = os.pipe()
    os.close(r)  # nobody reads: the writer thread gets EPIPE
    writer = BackgroundWriter(w)
    with pytest.raises(BrokenPipeError):
        for _ in range(100):
            writer.write(b"x" * 100_000)
        writer.close()
    with pytest.raises(BrokenPipeError):  # closing again (the error path does) returns at once
        writer.close()
    os.close(w)

