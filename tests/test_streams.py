"""Pipes and files: full chunks however a pipe delivers them, whole writes, write errors
carried back from the writer thread."""

from __future__ import annotations

import os
import threading

import pytest

from octoray import streams
from octoray.streams import BackgroundWriter, in_place, read_chunks, read_full_bytes


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


@pytest.mark.parametrize("built", [True, False], ids=["read_rest", "joined"])
@pytest.mark.parametrize("total", [0, 5, 65_536, 200_000])
def test_full_reads_as_bytes_wait_for_the_size_or_the_end(total, built, monkeypatch):
    if not built:  # a checkout whose extensions are not built joins the pieces instead
        monkeypatch.setattr(streams, "_read_rest", streams._joined_rest)
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


def drained(r: int, got: bytearray) -> threading.Thread:
    """A started thread that reads `r` to its end into `got`."""
    def drain():
        for piece in iter(lambda: os.read(r, 1 << 16), b""):
            got.extend(piece)

    reader = threading.Thread(target=drain)
    reader.start()
    return reader


def test_a_large_output_arrives_whole_and_in_order():
    r, w = os.pipe()
    pieces = [os.urandom(50_000) for _ in range(20)]
    got = bytearray()
    reader = drained(r, got)
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



def test_a_short_read_continues_into_one_object_of_the_full_size():
    from octoray._streams import read_rest

    r, w = os.pipe()
    os.write(w, b"tail")
    os.close(w)
    assert read_rest(r, b"head-", 100) == b"head-tail"  # the input ended first
    os.close(r)
    with pytest.raises(OSError):
        read_rest(-1, b"x", 10)


def test_writes_in_place_come_after_everything_queued():
    """An ordered collector writes on its own thread (write_here) after pieces that went
    through the writer's thread or were held back as small: the output keeps their order."""
    r, w = os.pipe()
    got = bytearray()
    reader = drained(r, got)
    held = BackgroundWriter(w)
    held.write(b"small ")  # held back: no thread yet
    here = in_place(held.write)
    here(b"direct ")
    threaded = BackgroundWriter(w)
    pieces = [bytes([65 + i]) * 40_000 for i in range(12)]
    for piece in pieces:
        threaded.write(piece)
    assert threaded._thread is not None
    in_place(threaded.write)(b" last")
    threaded.close()
    held.close()
    os.close(w)
    reader.join()
    os.close(r)
    assert bytes(got) == b"small direct " + b"".join(pieces) + b" last"
    plain = [].append
    assert in_place(plain) is plain  # any other callable is used as it is


def test_a_write_in_place_raises_its_own_error():
    r, w = os.pipe()
    os.close(r)
    writer = BackgroundWriter(w)
    with pytest.raises(BrokenPipeError):
        writer.write_here(b"x")
    os.close(w)
