"""fclassify in a terminal: what the user sees on the screen once it is done (a real
pseudo-terminal, its output replayed through the pyte terminal emulator)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import threading
import time

import numpy as np
import pyte

from conftest import run, tool

COLUMNS, ROWS = 100, 300
PROGRESS = re.compile(rb"\rfclassify: ([\d,]+) images?(, [\d,]+/s)?\x1b\[K")


def on_terminal(args, *, feed=(), pause=0.0, stdout=None, stdin_terminal=False, timeout=60):
    """Run fclassify with stderr (and stdout, unless a file is given) on a new pseudo-terminal
    of COLUMNS x ROWS, writing `feed`'s chunks to its stdin pipe `pause` seconds apart.
    Returns (every byte the terminal got, the screen's non-blank lines at the end, exit code)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    process = subprocess.Popen([*tool("fclassify"), *map(str, args)],
                               stdin=slave if stdin_terminal else subprocess.PIPE,
                               stdout=stdout if stdout is not None else slave, stderr=slave)
    os.close(slave)

    def write():
        try:
            for chunk in feed:
                process.stdin.write(chunk)
                process.stdin.flush()
                time.sleep(pause)
            process.stdin.close()
        except BrokenPipeError:
            pass

    writer = None if stdin_terminal else threading.Thread(target=write, daemon=True)
    if writer:
        writer.start()
    seen, deadline = bytearray(), time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 1 << 16)
                except OSError:  # EIO: every process holding the terminal has closed it
                    break
                if not chunk:
                    break
                seen += chunk
            elif process.poll() is not None and not select.select([master], [], [], 0.2)[0]:
                break
        status = process.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)
    screen = pyte.Screen(COLUMNS, ROWS)
    pyte.ByteStream(screen).feed(bytes(seen))
    return bytes(seen), [line.rstrip() for line in screen.display if line.strip()], status


def cifar_batches(count: int, per_batch: int, seed: int = 4):
    """`count` CIFAR-10 records in chunks of `per_batch`, and the lines fclassify prints for them
    into a pipe (test_fclassify checks those against the reference)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (count, 4, 4, 3), dtype=np.uint8)
    images = np.repeat(np.repeat(small, 8, axis=1), 8, axis=2)  # blocky, not pure noise
    records = [bytes([i % 10]) + image.transpose(2, 0, 1).tobytes() for i, image in enumerate(images)]
    chunks = [b"".join(records[i:i + per_batch]) for i in range(0, count, per_batch)]
    piped = run([*tool("fclassify")], input=b"".join(records), check=True).stdout.decode().splitlines()
    assert len(piped) == count
    return chunks, piped


def on_screen(lines):
    """Lines as the terminal shows them (tabs to the next multiple of 8 columns)."""
    return [line.expandtabs() for line in lines]


def test_results_on_the_terminal_are_clean_lines_with_the_progress_drawn_below_them():
    chunks, lines = cifar_batches(160, 4)
    truncated = chunks[-1][:100]  # a last, broken record: its message has a line of its own
    seen, screen, status = on_terminal(["--batch", 4], feed=chunks + [truncated], pause=0.05)
    assert status == 1
    assert screen == on_screen(lines) + ["fclassify: -:160: truncated CIFAR-10 record (100 of 3073 bytes)"]
    readings = PROGRESS.findall(seen)
    assert readings, seen[-2000:]  # the line was drawn, and cleared again before each batch
    assert not readings[0][1] and int(readings[0][0].replace(b",", b"")) > 1  # a count first, no rate
    assert any(rate for _count, rate in readings)  # then a rate, measured over a second


def test_verbose_ends_with_a_one_line_summary():
    chunks, lines = cifar_batches(40, 4, seed=5)
    _seen, screen, status = on_terminal(["-v", "--batch", 4], feed=chunks, pause=0.04)
    assert status == 0
    assert screen[:-1] == on_screen(lines)
    assert re.fullmatch(r"fclassify: 40 images in [\d.]+ s \([\d,]+/s\) on local \(cpu.*\)", screen[-1])


def test_results_to_a_file_leave_only_a_cleared_progress_line_on_the_terminal(tmp_path):
    chunks, lines = cifar_batches(120, 4, seed=6)
    with open(tmp_path / "out.tsv", "wb") as out:
        seen, screen, status = on_terminal(["--batch", 4], feed=chunks, pause=0.04, stdout=out)
    assert status == 0 and screen == []
    assert PROGRESS.search(seen)
    assert (tmp_path / "out.tsv").read_text().splitlines() == lines


def test_quiet_draws_no_progress():
    chunks, lines = cifar_batches(80, 4, seed=7)
    seen, screen, status = on_terminal(["-q", "--batch", 4], feed=chunks, pause=0.03)
    assert status == 0 and b"\r" not in seen.replace(b"\r\n", b"")
    assert screen == on_screen(lines)


def test_no_input_named_on_a_terminal_is_a_usage_error_not_a_silent_wait():
    for args in ([], ["-"]):
        seen, screen, status = on_terminal(args, stdin_terminal=True, timeout=30)
        assert status == 2, seen
        text = " ".join(screen)
        assert "not read from a terminal" in text and "fclassify -h" in text
