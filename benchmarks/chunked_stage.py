"""A pipeline stage that writes or reads the chunked member format through the modules, as
`fgzip` will once it does: `encode [-LEVEL]` (stdin to stdout, an index where stdout is a file
it can seek back into) and `decode [-p N]`.  Used by benchmarks/gunzip_bench.py; imports only
what the stage needs, so that its start-up is the modules' own.
"""

from __future__ import annotations

import os
import stat
import sys

CHUNK = 1 << 20


def encode(fd_in: int, fd_out: int, level: int = 6, threads: int | None = None) -> None:
    """fgzip's compression with the chunked header: what `fgzip` does once it writes the format.
    An index is reserved when the input's size is known and the output can be seeked back into."""
    import fcntl

    from octoray.engine.executors import LocalExecutor
    from octoray.engine.stream import ordered_map
    from octoray.formats import gzip as gz
    from octoray.formats import gzip_chunks
    from octoray.kernels.tasks import deflate_chunk
    from octoray.streams import read_chunks, write_all

    size = os.fstat(fd_in).st_size if stat.S_ISREG(os.fstat(fd_in).st_mode) else None
    seekable = stat.S_ISREG(os.fstat(fd_out).st_mode) and not fcntl.fcntl(fd_out, fcntl.F_GETFL) & os.O_APPEND
    slots = gzip_chunks.index_slots(size, CHUNK) if seekable else 0
    start = os.lseek(fd_out, 0, os.SEEK_CUR) if slots else 0
    head, at = gzip_chunks.header(None, 0, level, chunk_size=CHUNK, slots=slots)
    write_all(fd_out, head)
    assembler, sizes = gz.MemberAssembler(), []
    jobs = ((chunk, None, level, last) for chunk, last in read_chunks(fd_in, CHUNK))
    with LocalExecutor(threads) as executor:
        for deflated in ordered_map(deflate_chunk, jobs, executor):
            write_all(fd_out, assembler.add(deflated))
            sizes.append(len(deflated.data))
    end = assembler.finish_stream()
    if end:  # an empty input: the final block is its one (empty) chunk
        sizes.append(len(end))
    write_all(fd_out, end + gz.trailer(assembler.crc, assembler.size))
    if slots:
        os.pwrite(fd_out, gzip_chunks.index_bytes(sizes, slots), start + at)


def decode(fd_in: int, fd_out: int, threads: int) -> None:
    """One member, decoded as `fgzip -d` will: in parallel where the header announces chunks."""
    from octoray.engine.executors import LocalExecutor
    from octoray.jobs.gunzip_parallel import inflate_fd
    from octoray.streams import BackgroundWriter, enlarge_pipe

    enlarge_pipe(fd_in)
    enlarge_pipe(fd_out)
    writer = BackgroundWriter(fd_out)
    with LocalExecutor(threads) as executor:
        inflate_fd(fd_in, writer.write, executor)
    writer.close()


def main(argv: list[str]) -> int:
    if argv[:1] == ["encode"]:
        encode(0, 1, int(argv[1].lstrip("-")) if len(argv) > 1 else 6)
    elif argv[:1] == ["decode"]:
        decode(0, 1, int(argv[2]) if len(argv) > 2 and argv[1] == "-p" else 2)
    else:
        sys.exit(__doc__)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
