"""A stream larger than 4 GiB, through a pipe: compressed, checked by gzip, decompressed."""

from __future__ import annotations

import hashlib
import subprocess

from conftest import text_like, tool

SIZE = (1 << 32) + 123_457  # past 4 GiB: ISIZE wraps, CRC combining runs over thousands of chunks


def test_multi_gigabyte_stream_round_trips_through_gzip_and_fgzip(tmp_path):
    block = text_like(4 << 20, seed=9)  # 4 MiB of text, varied per block below
    fg = " ".join(tool("fgzip"))
    shell = (f"{fg} -1 | tee >(gzip -dc | sha256sum > {tmp_path}/by-gzip) "
             f"| {fg} -d | sha256sum > {tmp_path}/by-fgzip; wait $!")  # $!: the gzip -dc side
    proc = subprocess.Popen(["bash", "-o", "pipefail", "-c", shell], stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    digest = hashlib.sha256()
    sent = 0
    n = 0
    while sent < SIZE:
        piece = (b"%012d" % n + block)[: SIZE - sent]
        digest.update(piece)
        proc.stdin.write(piece)
        sent += len(piece)
        n += 1
    proc.stdin.close()
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    for name in ("by-fgzip", "by-gzip"):
        assert (tmp_path / name).read_text().split()[0] == digest.hexdigest(), name
