"""Pipes and files: the read-ahead thread keeps order, reports errors, and stops cleanly."""

from __future__ import annotations

import os
import threading

import pytest

from octoray.streams import ReadAhead


def test_read_ahead_returns_every_piece_in_order_then_eof():
    r, w = os.pipe()
    payload = os.urandom(300_000)

    def feed():
        for i in range(0, len(payload), 7_000):
            os.write(w, payload[i:i + 7_000])
        os.close(w)

    threading.Thread(target=feed).start()
    reader = ReadAhead(r, 64 * 1024)
    got = b"".join(iter(reader.read, b""))
    assert got == payload
    assert reader.read() == b""
    reader.close()
    os.close(r)


def test_read_ahead_carries_a_read_error_to_the_consumer(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY)  # reading a directory fails with EISDIR
    reader = ReadAhead(fd, 4096)
    with pytest.raises(IsADirectoryError):
        reader.read()
    reader.close()
    os.close(fd)


def test_close_stops_the_thread_on_a_file_left_half_read(tmp_path):
    path = tmp_path / "big"
    path.write_bytes(b"x" * (8 << 20))
    fd = os.open(path, os.O_RDONLY)
    reader = ReadAhead(fd, 1 << 20, depth=1)
    assert reader.read() == b"x" * (1 << 20)
    reader.close()
    assert not reader._thread.is_alive()  # the descriptor can be closed and reused safely
    os.close(fd)
