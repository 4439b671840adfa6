"""Scale-out: every card of the host on the embedded default, the emulated cards' throughput
model, the one-process-per-card rule, and a cluster whose workers read a shared input file
themselves (byte-exact, a killed worker survived, a changing file refused)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import ROOT, fgzip, run, text_like, tool
from octoray.engine.dask_executor import CONNECT_TIMEOUT
from test_cluster import Cluster


def cards_env(cards: int, **extra) -> dict:
    env = dict(os.environ, OCTORAY_ACCELERATOR="fpga-emulator", OCTORAY_EMULATED_DEVICES=str(cards), **extra)
    for name in ("OCTORAY_DEVICE", "DASK_SCHEDULER_ADDRESS", "OCTORAY_LOCK_DIR"):
        if name not in extra:
            env.pop(name, None)
    return env


def status_rows(env: dict, *argv: str) -> list[list[str]]:
    result = run([*tool("octoray"), "status", *argv], env=env, check=True)
    return [line.split() for line in result.stdout.decode().splitlines()[1:]]


# --- the embedded default drives every card ---------------------------------------------------

def test_status_lists_every_card_and_octoray_device_restricts_them():
    rows = status_rows(cards_env(3))
    assert [row[1] for row in rows] == ["fpga-emulator:0", "fpga-emulator:1", "fpga-emulator:2"]
    assert all(row[0] == "local" and row[-2] == "2" for row in rows)  # two threads a card
    rows = status_rows(cards_env(4, OCTORAY_DEVICE="0,2"))
    assert [row[1] for row in rows] == ["fpga-emulator:0", "fpga-emulator:2"]
    missing = run([*tool("octoray"), "status"], env=cards_env(2, OCTORAY_DEVICE="3"))
    assert missing.returncode == 1
    assert missing.stderr == b"octoray: accelerator 'fpga-emulator': no card 3 (2 found)\n"
    bad = run([*tool("octoray"), "status"], env=cards_env(2, OCTORAY_DEVICE="one"))
    assert bad.returncode == 1 and b"OCTORAY_DEVICE='one' is not a card index" in bad.stderr


LANES_PROBE = """
import json, os, sys
from octoray.engine.cluster import open_executor
from octoray.jobs.gzip import compress_stream
out = bytearray()
with open_executor() as executor:
    fd = os.open(sys.argv[1], os.O_RDONLY)
    compress_stream(fd, out.extend, executor, block_size=1 << 18)
    sys.stdout.buffer.write(bytes(out))
    sys.stderr.write(json.dumps([[row["accelerator"], row["tasks"]] for row in executor.describe()]))
"""


def test_the_embedded_default_keeps_every_card_busy_and_writes_in_order(tmp_path, gzip_bin):
    data = tmp_path / "data"
    data.write_bytes(text_like(6 << 20, seed=31))
    outputs = {}
    for cards in (1, 4):
        env = cards_env(cards, OCTORAY_EMULATED_GZIP_MBPS="200", PYTHONPATH=str(ROOT))
        result = subprocess.run([sys.executable, "-c", LANES_PROBE, str(data)], capture_output=True, env=env,
                                timeout=120)
        assert result.returncode == 0, result.stderr
        lanes = json.loads(result.stderr)
        assert [name.split()[0] for name, _ in lanes] == [f"fpga-emulator:{i}" for i in range(cards)]
        assert all(tasks >= 2 for _, tasks in lanes), lanes  # 24 chunks: every card took some
        outputs[cards] = result.stdout
    # In order on any number of cards.  Not always the same bytes: the emulated cards' ISA-L
    # level 1 now and then encodes a block differently, though validly (a match one run, five
    # literals the next: 1 run in about 20 under load), so the sizes may differ by a byte or two.
    for cards in (1, 4):
        assert run([gzip_bin, "-dc"], input=outputs[cards], check=True).stdout == data.read_bytes()
    assert abs(len(outputs[4]) - len(outputs[1])) <= 16
    cli = fgzip("-c", data, env=cards_env(4), check=True)
    assert run([gzip_bin, "-dc"], input=cli.stdout, check=True).stdout == data.read_bytes()


DECODING_PROBE = """
import json, os
import octoray.kernels as kernels
from octoray.engine.cluster import open_executor
from octoray.engine.executors import available_cpus
with open_executor(accelerators=False) as executor:
    print(json.dumps([type(executor).__name__, executor.workers == available_cpus(), kernels._lanes is None]))
"""


def test_decoding_runs_on_the_cpus_threads_and_opens_no_card(tmp_path, gzip_bin):
    """No card decodes gzip: fgzip -d's embedded engine is the CPU's thread pool (-p threads,
    not two per card), and it opens no card to find that out."""
    env = cards_env(3, PYTHONPATH=str(ROOT))
    probe = subprocess.run([sys.executable, "-c", DECODING_PROBE], capture_output=True, env=env, timeout=60)
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout) == ["LocalExecutor", True, True]
    data = text_like(3 << 20, seed=8)
    member = fgzip("-c", input=data, env=cards_env(3), check=True).stdout
    for argv in (["-dc"], ["-dc", "-p", "3"]):
        assert fgzip(*argv, input=member, env=cards_env(3), check=True).stdout == data


# --- the emulated cards' throughput model -------------------------------------------------------

def test_an_emulated_card_takes_as_long_as_its_rate_says_without_holding_a_cpu(monkeypatch):
    import numpy as np

    from octoray.kernels.fpga import FpgaAccelerator
    from octoray.kernels.fpga_emulator import EmulatedPynq

    monkeypatch.setenv("OCTORAY_EMULATED_GZIP_MBPS", "20")
    monkeypatch.setenv("OCTORAY_EMULATED_CNV_IPS", "400")
    emulator = EmulatedPynq(devices=2, classifier=lambda images: images[:, 0, 0, 0] % 10)
    cards = [FpgaAccelerator(i, pynq_module=emulator, kind="fpga-emulator") for i in range(2)]
    try:
        data = text_like(4_000_000, seed=5)
        cards[0].deflate(data[:100_000], 6, False)  # load the overlay first
        start, cpu = time.monotonic(), time.process_time()
        body = cards[0].deflate(data, 6, True)
        alone, alone_cpu = time.monotonic() - start, time.process_time() - cpu
        assert alone >= 0.2  # 4 MB at 20 MB/s
        assert alone_cpu < alone / 2  # the rest of the time the card waited, not computed
        import zlib

        assert zlib.decompressobj(-15).decompress(body) == data  # and the result is real

        cards[1].deflate(data[:100_000], 6, False)
        start = time.monotonic()
        threads = [threading.Thread(target=card.deflate, args=(data, 6, True)) for card in cards]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        both = time.monotonic() - start
        assert both < 1.6 * alone  # two cards wait side by side: no lock or GIL held while waiting

        images = np.zeros((80, 32, 32, 3), dtype=np.uint8)
        images[:, 0, 0, 0] = np.arange(80)
        start = time.monotonic()
        scores = cards[0].cnv_scores(images)
        assert time.monotonic() - start >= 0.2  # 80 images at 400 a second
        assert scores.argmax(axis=1).tolist() == [i % 10 for i in range(80)]
    finally:
        for card in cards:
            card.close()


@pytest.mark.parametrize("variable, value, words", [
    ("OCTORAY_EMULATED_GZIP_MBPS", "fast", "OCTORAY_EMULATED_GZIP_MBPS='fast' is not a number"),
    ("OCTORAY_EMULATED_CNV_IPS", "0", "OCTORAY_EMULATED_CNV_IPS='0' must be above 0"),
    ("OCTORAY_EMULATED_DEVICES", "x", "OCTORAY_EMULATED_DEVICES='x' is not a number of cards (0 to 64)"),
    ("OCTORAY_EMULATED_DEVICES", "-3", "OCTORAY_EMULATED_DEVICES='-3' is not a number of cards (0 to 64)"),
    ("OCTORAY_EMULATED_DEVICES", "100000", "OCTORAY_EMULATED_DEVICES='100000' is not a number of cards (0 to 64)"),
])
def test_an_invalid_emulator_setting_is_a_clear_error(variable, value, words):
    env = dict(cards_env(1), **{variable: value})
    result = fgzip("-c", input=b"x" * 100, env=env)
    assert result.returncode == 1
    assert result.stderr == f"fgzip: accelerator 'fpga-emulator': {words}\n".encode()


@pytest.mark.parametrize("value", ["abc", "0", "-1"])
def test_an_invalid_jobs_per_task_is_a_clear_error(value):
    result = fgzip("--cluster=local", "-c", input=b"x" * 100, env=dict(os.environ, OCTORAY_JOBS_PER_TASK=value))
    assert (result.returncode, result.stdout) == (1, b"")
    assert result.stderr == f"fgzip: OCTORAY_JOBS_PER_TASK={value!r} is not a number of jobs (1 or more)\n".encode()


# --- one process per card -----------------------------------------------------------------------

def test_workers_without_octoray_device_share_the_cards_and_never_fight_for_one(tmp_path):
    locks = tmp_path / "locks"
    c = Cluster(tmp_path, env=cards_env(3, OCTORAY_LOCK_DIR=str(locks)))
    try:
        c.add_worker("both", None, accelerator="fpga-emulator", threads=2)  # takes cards 0 and 1
        c.wait_for_workers(1)
        c.add_worker("rest", None, accelerator="fpga-emulator")  # takes the card left: 2
        c.wait_for_workers(2)
        rows = status_rows(dict(os.environ), "--scheduler", c.address)
        assert [(row[0], row[1]) for row in rows] == [
            ("both", "fpga-emulator:0"), ("both", "fpga-emulator:1"), ("rest", "fpga-emulator:2")]
        held = run([*tool("octoray"), "status"], env=cards_env(3, OCTORAY_LOCK_DIR=str(locks), OCTORAY_DEVICE="1"))
        assert held.returncode == 1
        pid = c.workers["both"].pid
        assert held.stderr == (f"octoray: accelerator 'fpga-emulator': card 1 is held by another process "
                               f"(card 1: pid {pid}); OCTORAY_DEVICE picks others\n").encode()
        none_free = run([*tool("fgzip"), "-c"], input=b"x", env=cards_env(3, OCTORAY_LOCK_DIR=str(locks)))
        assert none_free.returncode == 1 and b"cards 0, 1, 2 are held by other processes" in none_free.stderr
    finally:
        c.stop()


def test_a_lock_folder_that_is_a_file_says_so(tmp_path):
    (tmp_path / "locks").write_text("not a folder\n")
    result = run([*tool("fgzip"), "-c"], input=b"x", env=cards_env(1, OCTORAY_LOCK_DIR=str(tmp_path / "locks")))
    assert (result.returncode, result.stdout) == (1, b"")
    assert result.stderr.decode() == (f"fgzip: cannot lock card 0: the lock folder {tmp_path / 'locks'} is not a "
                                      f"directory (OCTORAY_LOCK_DIR)\n")


# --- workers that read the input file themselves ------------------------------------------------

def two_card_cluster(tmp_path, env: dict) -> Cluster:
    """A scheduler and two workers, one emulated card each (card0, card1)."""
    c = Cluster(tmp_path, env=env)
    try:
        c.add_worker("card0", 0, accelerator="fpga-emulator")
        c.add_worker("card1", 1, accelerator="fpga-emulator")
        c.wait_for_workers(2)
    except BaseException:
        c.stop()
        raise
    return c


@pytest.fixture
def card_cluster(tmp_path):
    """Two cards slow enough (12 MB/s) to act on mid-run."""
    c = two_card_cluster(tmp_path, cards_env(2, OCTORAY_EMULATED_GZIP_MBPS="12"))
    yield c
    c.stop()


def test_workers_read_a_shared_file_themselves_with_the_same_output(tmp_path, gzip_bin):
    """Byte for byte what the embedded default writes, from the file, from stdin redirected
    from it, and from a pipe (CPU workers at -6: libdeflate is deterministic, the emulated
    cards' ISA-L level 1 now and then encodes a block differently, though always validly)."""
    c = Cluster(tmp_path)
    try:
        c.add_worker("w0", 0)
        c.add_worker("w1", 1)
        c.wait_for_workers(2)
        data = text_like(20 << 20, seed=32)
        path = tmp_path / "input"
        path.write_bytes(data)
        on = ["--scheduler", c.address]
        cpu = dict(os.environ, OCTORAY_ACCELERATOR="cpu")
        embedded = fgzip("-cn", path, env=cpu, check=True).stdout  # -n: no name, as from a pipe
        shared = fgzip("-cnv", *on, path, env=cpu, check=True)
        assert shared.stdout == embedded
        assert shared.stderr.decode().endswith(f"fgzip: 2 of 2 workers read {path} themselves\n")
        relative = subprocess.run([*tool("fgzip"), "-cnv", *on, "input"], capture_output=True, env=cpu,
                                  cwd=tmp_path, timeout=120)
        assert relative.stdout == embedded
        assert relative.stderr.endswith(b"fgzip: 2 of 2 workers read input themselves\n")
        piped = subprocess.run(f"cat {path} | {' '.join(tool('fgzip'))} -nv {' '.join(on)}", shell=True,
                               capture_output=True, env=cpu, timeout=120)
        assert piped.returncode == 0 and piped.stdout == embedded
        assert piped.stderr.endswith(b"fgzip: the input is not a regular file: its data is sent to the workers\n")
        with open(path, "rb") as stdin:  # stdin redirected from the file: read by the workers too
            redirected = subprocess.run([*tool("fgzip"), "-nv", *on], stdin=stdin, capture_output=True,
                                        env=cpu, timeout=120)
        assert redirected.stdout == embedded and b"2 of 2 workers read" in redirected.stderr
        assert run([gzip_bin, "-dc"], input=embedded, check=True).stdout == data
        assert sum(c.status().values()) >= 3 * 3  # each run's 3 tasks ran on the cluster
        fgzip("-k", *on, path, env=cpu, check=True)  # to a file beside it, as gzip does
        assert run([gzip_bin, "-dc", f"{path}.gz"], check=True).stdout == data
    finally:
        c.stop()


def test_a_worker_killed_while_workers_read_the_file_does_not_break_the_output(card_cluster, tmp_path, gzip_bin):
    data = text_like(48 << 20, seed=33)  # two cards at 12 MB/s: about 2 s
    path = tmp_path / "input"
    path.write_bytes(data)
    proc = subprocess.Popen([*tool("fgzip"), "-c", "--scheduler", card_cluster.address, str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cards_env(2))
    timer = threading.Timer(0.8, lambda: card_cluster.workers["card1"].send_signal(signal.SIGKILL))
    timer.start()
    out, err = proc.communicate(timeout=180)
    timer.join()
    assert card_cluster.workers["card1"].poll() is not None  # it was killed before the end
    assert proc.returncode == 0, err
    assert run([gzip_bin, "-dc"], input=out, check=True).stdout == data


def test_a_file_that_changes_under_the_workers_is_reported_not_mixed(card_cluster, tmp_path):
    data = text_like(64 << 20, seed=34)  # two cards at 12 MB/s: about 3 s
    path = tmp_path / "input"
    path.write_bytes(data)
    proc = subprocess.Popen([*tool("fgzip"), "-kv", "--scheduler", card_cluster.address, "input"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cards_env(2), cwd=tmp_path)
    time.sleep(1.5)
    with open(path, "r+b") as f:  # rewrite a piece of the last task's range, not read yet
        f.seek(60 << 20)
        f.write(b"X" * 4096)
    out, err = proc.communicate(timeout=180)
    # the name as given (the engine knows the absolute path), on a line of its own after -v's "input:\t"
    assert (proc.returncode, err) == (1, b"input:\t\nfgzip: input: changed while the workers were reading it\n")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("input")) == ["input"]


def test_a_file_removed_while_the_workers_read_it_is_finished_from_the_clients_copy(tmp_path, gzip_bin):
    """gzip keeps reading a file removed under it (its descriptor holds it), and so does fgzip,
    whose workers can no longer open it: the client sends them the bytes from its own
    descriptor, every request that was in flight included (a two-thread worker: four)."""
    c = Cluster(tmp_path, env=cards_env(1, OCTORAY_EMULATED_GZIP_MBPS="12"))
    try:
        c.add_worker("card0", 0, accelerator="fpga-emulator", threads=2)
        c.wait_for_workers(1)
        data = text_like(40 << 20, seed=35)  # one card at 12 MB/s: about 3 s
        path = tmp_path / "input"
        path.write_bytes(data)
        proc = subprocess.Popen([*tool("fgzip"), "-c", "--scheduler", c.address, str(path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cards_env(1))
        first = os.read(proc.stdout.fileno(), 1)  # the first task answered: the workers read ranges
        path.unlink()
        out, err = proc.communicate(timeout=180)
        assert (proc.returncode, err) == (0, b"")
        assert run([gzip_bin, "-dc"], input=first + out, check=True).stdout == data
    finally:
        c.stop()


def bind_mount_prefix(source, target) -> tuple:
    """A command prefix that runs the command where `source` is mounted over `target` (its
    own mount namespace), or skips the test where this machine allows none."""
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind '{source}' '{target}'"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no mount namespace here: {probe.stderr.decode().strip()}")
    return ("unshare", "-m", "sh", "-c", 'mount --bind "$1" "$2" && shift 2 && exec "$@"', "sh",
            str(source), str(target))


def test_a_worker_that_sees_another_file_with_the_same_size_and_mtime_gets_the_bytes(tmp_path, gzip_bin):
    """Node-local copies at one path can match in size and mtime and still differ: the workers
    must also give the digest of three pieces of the file this host gives, or get the bytes."""
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    data, other = text_like(12 << 20, seed=36), text_like(12 << 20, seed=37)
    (here / "input").write_bytes(data)
    (elsewhere / "input").write_bytes(other)
    stamp = os.stat(here / "input").st_mtime_ns
    os.utime(elsewhere / "input", ns=(stamp, stamp))
    c = Cluster(tmp_path)
    try:
        c.add_worker("w0", 0)
        c.add_worker("w1", 1, prefix=bind_mount_prefix(elsewhere, here))
        c.wait_for_workers(2)
        result = fgzip("-cv", "-b", "256", "--scheduler", c.address, here / "input",
                       env=dict(os.environ, OCTORAY_ACCELERATOR="cpu"), check=True)
        assert result.stderr.decode().endswith(f"fgzip: 1 of 2 workers read {here / 'input'} themselves\n")
        assert run([gzip_bin, "-dc"], input=result.stdout, check=True).stdout == data
        assert set(c.status()) == {"w0", "w1"} and min(c.status().values()) >= 1  # both took tasks
    finally:
        c.stop()


# --- fclassify: workers read the image files themselves ---------------------------------------

def write_images(top, count: int, seed: int) -> None:
    """`count` small JPEGs in two folders (names sort as the walk visits them)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(count):
        folder = top / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(small).resize((32, 32), Image.Resampling.BILINEAR).save(folder / f"{i:04d}.jpg")


def fclassify_run(*argv, env: dict, stdin=None) -> subprocess.CompletedProcess:
    return subprocess.run([*tool("fclassify"), *map(str, argv)], stdin=stdin, capture_output=True, env=env,
                          timeout=180)


def test_fclassify_workers_read_the_image_files_themselves_with_the_same_output(tmp_path):
    """Files the workers see as this host does travel as paths; stdin's bytes travel as they
    are; the output is the embedded default's either way."""
    images = tmp_path / "images"
    write_images(images, 60, seed=41)
    env = cards_env(2)
    embedded = fclassify_run("--batch", "8", images, env=env)
    assert embedded.returncode == 0 and len(embedded.stdout.splitlines()) == 60
    c = two_card_cluster(tmp_path, env)
    try:
        shared = fclassify_run("-v", "--batch", "8", "--scheduler", c.address, images, env=env)
        assert shared.returncode == 0, shared.stderr
        assert shared.stdout == embedded.stdout
        assert b"fclassify: 2 of 2 workers read the input files themselves\n" in shared.stderr
        done = c.status()
        assert sorted(done) == ["card0", "card1"] and all(n >= 2 for n in done.values()), done
        one = sorted(images.rglob("*.jpg"))[0]
        with open(one, "rb") as stdin:
            piped = fclassify_run("-v", "--scheduler", c.address, "-", env=env, stdin=stdin)
        with open(one, "rb") as stdin:
            alone = fclassify_run("-", env=env, stdin=stdin)
        assert piped.returncode == 0, piped.stderr
        assert piped.stdout == alone.stdout and len(alone.stdout.splitlines()) == 1
        assert b"fclassify: the images' data is sent to the workers\n" in piped.stderr
    finally:
        c.stop()


def test_fclassify_survives_a_worker_killed_while_workers_read_the_images(tmp_path):
    images = tmp_path / "images"
    write_images(images, 600, seed=42)
    env = cards_env(2, OCTORAY_EMULATED_CNV_IPS="200")  # two cards: about 1.5 s
    embedded = fclassify_run("--batch", "16", images, env=cards_env(2))
    assert embedded.returncode == 0 and len(embedded.stdout.splitlines()) == 600
    c = two_card_cluster(tmp_path, env)
    try:
        proc = subprocess.Popen([*tool("fclassify"), "-v", "--batch", "16", "--scheduler", c.address, str(images)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        killed_at = []
        timer = threading.Timer(0.8, lambda: (c.workers["card1"].send_signal(signal.SIGKILL),
                                              killed_at.append(time.monotonic())))
        timer.start()
        out, err = proc.communicate(timeout=180)
        timer.join()
        assert c.workers["card1"].poll() is not None  # it was killed before the end
        assert proc.returncode == 0, err
        # its requests went to card0 at once: none waited out the connect retries to its port
        assert time.monotonic() - killed_at[0] < CONNECT_TIMEOUT
        assert b"workers read the input files themselves" in err
        assert out == embedded.stdout
    finally:
        c.stop()
