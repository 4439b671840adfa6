"""Both tools on a real Dask cluster: `dask scheduler` and `dask worker --preload octoray.worker`
processes on 127.0.0.1, started and stopped by the fixtures, logs under tmp_path."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT, blurry_pngs, fgzip, run, text_like, tool


def dask_command() -> list[str]:
    return [sys.executable, "-m", "dask"]


class Cluster:
    def __init__(self, where: Path, tls: list[str] = (), env: dict | None = None):
        self.where = where
        self.tls = list(tls)  # --tls-ca-file/--tls-cert/--tls-key for scheduler and workers
        self.scheduler_file = where / "scheduler.json"
        self.env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
        protocol = ["--protocol", "tls", *self.tls] if self.tls else []
        self.scheduler = subprocess.Popen(
            [*dask_command(), "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address",
             "127.0.0.1:0", "--scheduler-file", str(self.scheduler_file), "--no-show", *protocol],
            stdout=open(where / "scheduler.log", "wb"), stderr=subprocess.STDOUT, env=self.env)
        self.workers: dict[str, subprocess.Popen] = {}
        deadline = time.time() + 60
        while not self.scheduler_file.exists():
            assert time.time() < deadline, (where / "scheduler.log").read_text()
            time.sleep(0.1)
        time.sleep(0.3)
        self.address = json.loads(self.scheduler_file.read_text())["address"]

    def add_worker(self, name: str, device: int | None, accelerator: str = "cpu", threads: int = 1,
                   preload: bool = True, prefix: tuple = ()) -> None:
        """A worker bound to card `device` (None: OCTORAY_DEVICE unset, every free card), its
        command run by `prefix` (another mount namespace, say)."""
        env = dict(self.env, OCTORAY_ACCELERATOR=accelerator)
        env.pop("OCTORAY_DEVICE", None)
        if device is not None:
            env["OCTORAY_DEVICE"] = str(device)
        self.workers[name] = subprocess.Popen(
            # no nanny: the process killed in the tests is the worker itself
            [*prefix, *dask_command(), "worker", self.address, "--name", name, "--nthreads", str(threads),
             "--no-dashboard",
             "--no-nanny", *(["--preload", "octoray.worker"] if preload else []), *self.tls],
            stdout=open(self.where / f"{name}.log", "wb"), stderr=subprocess.STDOUT, env=env)

    def wait_for_workers(self, n: int) -> None:
        deadline = time.time() + 60
        while len(self.status()) < n:
            assert time.time() < deadline, "workers did not join"
            time.sleep(0.3)

    def status(self) -> dict[str, int]:
        result = run([*tool("octoray"), "status", "--scheduler", self.address], timeout=60)
        rows = result.stdout.decode().splitlines()[1:]
        return {row.split()[0]: int(row.split()[-1]) for row in rows}

    def stop(self) -> None:
        for proc in (*self.workers.values(), self.scheduler):  # workers first: faster shutdown
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    c.add_worker("fpga0", 0)
    c.add_worker("fpga1", 1)
    c.wait_for_workers(2)
    yield c
    c.stop()


def with_cluster_env(cluster):
    return dict(os.environ, DASK_SCHEDULER_ADDRESS=cluster.address)


def test_fgzip_spreads_chunks_over_both_workers(cluster, gzip_bin):
    data = text_like(24 << 20, seed=11)
    out = fgzip("-b", "64", input=data, env=with_cluster_env(cluster), check=True)
    assert out.stderr == b""  # no Dask log lines leak into the tool's stderr
    assert run([gzip_bin, "-dc"], input=out.stdout, check=True).stdout == data
    done = cluster.status()
    assert set(done) == {"fpga0", "fpga1"}
    assert all(n >= 5 for n in done.values()), done


def test_fclassify_on_the_cluster_prints_what_it_prints_locally(cluster, tmp_path):
    blurry_pngs(tmp_path, 96, seed=8)
    argv = [*tool("fclassify"), "--batch", "1", str(tmp_path)]
    local = run(argv, check=True)
    remote = run(argv, env=with_cluster_env(cluster), check=True)
    assert remote.stderr == b""
    assert remote.stdout == local.stdout and len(local.stdout.splitlines()) == 96
    done = cluster.status()
    assert all(n >= 3 for n in done.values()), done


def test_workers_started_without_the_preload_get_it_from_the_client(tmp_path, gzip_bin):
    """Both workers refuse the first requests at once; the client installs octoray's plugin
    once, and every refused request waits for it and goes again."""
    c = Cluster(tmp_path)
    try:
        c.add_worker("plain0", None, preload=False)
        c.add_worker("plain1", None, preload=False)
        c.wait_for_workers(2)
        data = text_like(6 << 20, seed=23)
        out = fgzip("-b", "64", input=data, env=with_cluster_env(c), check=True)
        assert run([gzip_bin, "-dc"], input=out.stdout, check=True).stdout == data
        assert all(tasks >= 1 for tasks in c.status().values()), c.status()
    finally:
        c.stop()


def test_a_worker_frozen_before_the_run_without_the_preload_costs_seconds(tmp_path, gzip_bin):
    """Installing octoray's plugin waited for every worker to acknowledge it, a frozen one too:
    fgzip hung past Dask's 300 s worker TTL.  Now the wait is bounded, a worker that does not
    answer is not taken for one without the plugin, and the first requests' patience shrinks
    as the other worker answers."""
    data = text_like(8 << 20, seed=29)
    source = tmp_path / "data"
    source.write_bytes(data)
    c = Cluster(tmp_path)
    try:
        c.add_worker("plain", None, preload=False)
        c.add_worker("frozen", None, preload=False)
        c.wait_for_workers(2)
        c.workers["frozen"].send_signal(signal.SIGSTOP)
        started = time.monotonic()
        result = fgzip("-cv", "-b", "64", "--scheduler", c.address, source, timeout=200)
        took = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        lines = result.stderr.splitlines()  # the -v lines, nothing from Dask or asyncio
        assert len(lines) == 2 and lines[1].endswith(b"1 of 2 workers read " + bytes(source) + b" themselves"), lines
        assert run([gzip_bin, "-dc"], input=result.stdout, check=True).stdout == data
        assert took < 45, took  # who_sees 5 s, the plugin at most 10 s, patience 10 s
    finally:
        c.workers["frozen"].send_signal(signal.SIGCONT)
        c.stop()


def test_a_first_run_on_workers_without_the_preload_lets_them_read_the_files(tmp_path):
    """Asked which file they see before any task was sent, workers without the preload had no
    handler: "no worker sees ..." (the files' data sent) until the next run.  The client now
    installs the plugin there too and asks again."""
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    blurry_pngs(pictures, 3, seed=5)
    c = Cluster(tmp_path)
    try:
        c.add_worker("plain", None, preload=False)
        c.wait_for_workers(1)
        result = run([*tool("fclassify"), "-v", "--scheduler", c.address, str(pictures)], timeout=120)
        assert result.returncode == 0, result.stderr
        assert b"fclassify: 1 of 1 workers read the input files themselves\n" in result.stderr
        assert len(result.stdout.splitlines()) == 3
    finally:
        c.stop()


def test_a_file_whose_name_is_not_utf8_is_read_by_the_workers_too(cluster, tmp_path, gzip_bin):
    """The workers were asked about the name through Dask's msgpack, which refuses os.fsdecode's
    escapes: Dask's CRITICAL tracebacks and an internal error.  The name now goes as its bytes."""
    data = text_like(3 << 20, seed=41)
    name = os.path.join(os.fsencode(tmp_path), b"bad\xffname")
    with open(name, "wb") as f:
        f.write(data)
    result = fgzip("-cv", "--scheduler", cluster.address, os.fsdecode(name), timeout=120)
    assert result.returncode == 0, result.stderr
    assert b"Traceback" not in result.stderr and b"CRITICAL" not in result.stderr
    assert b"2 of 2 workers read" in result.stderr
    assert run([gzip_bin, "-dc"], input=result.stdout, check=True).stdout == data


def test_status_lists_each_worker_and_its_accelerator(cluster):
    result = run([*tool("octoray"), "status", "--scheduler-file", str(cluster.scheduler_file)], check=True)
    lines = result.stdout.decode().splitlines()
    assert lines[0].split() == ["WORKER", "ACCELERATOR", "THREADS", "TASKS"]
    assert [line.split()[:3] for line in lines[1:]] == [["fpga0", "cpu", "1"], ["fpga1", "cpu", "1"]]


def test_status_names_a_frozen_worker_instead_of_waiting_for_it(cluster):
    cluster.workers["fpga1"].send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        result = run([*tool("octoray"), "status", "--scheduler", cluster.address], timeout=60)
        took = time.monotonic() - started
    finally:
        cluster.workers["fpga1"].send_signal(signal.SIGCONT)
    assert (result.returncode, result.stderr) == (0, b"")
    rows = [line.split(None, 1) for line in result.stdout.decode().splitlines()[1:]]
    assert rows[0][0] == "fpga0" and rows[0][1].startswith("cpu")
    assert rows[1][0] == "fpga1" and rows[1][1].startswith("not answering (nothing in 5 s)")
    assert took < 30  # was: no answer at all (Dask's run waits for every worker)


def slow_feed(proc, data: bytes, piece: int, pause: float, on_progress=None) -> threading.Thread:
    def feed():
        try:
            for i in range(0, len(data), piece):
                proc.stdin.write(data[i:i + piece])
                proc.stdin.flush()
                if on_progress:
                    on_progress(i + piece)
                time.sleep(pause)
            proc.stdin.close()
        except BrokenPipeError:
            pass
    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    return thread


def feed_killing_a_worker(cluster, argv: list[str], data: bytes, piece: int, sig: int = signal.SIGKILL):
    """Run `argv` on the cluster, fed `data` slowly in pieces; send worker fpga1 `sig` once
    half of it is sent.  (exit status, stdout, stderr)."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=with_cluster_env(cluster))
    killed = threading.Event()

    def kill_at_half(sent):
        if sent >= len(data) // 2 and not killed.is_set():
            killed.set()
            cluster.workers["fpga1"].send_signal(sig)

    feeder = slow_feed(proc, data, piece, 0.05, kill_at_half)
    out = proc.stdout.read()  # not communicate(): it would close stdin under the feeder
    err = proc.stderr.read()
    proc.wait(timeout=180)
    feeder.join(timeout=60)
    assert killed.is_set()
    return proc.returncode, out, err


def test_a_worker_killed_mid_stream_does_not_break_the_output(cluster, gzip_bin):
    data = text_like(16 << 20, seed=12)
    status, out, err = feed_killing_a_worker(cluster, [*tool("fgzip"), "-b", "64"], data, 1 << 20)
    assert status == 0, err
    assert run([gzip_bin, "-dc"], input=out, check=True).stdout == data


def test_a_worker_frozen_mid_stream_is_worked_around_in_seconds(cluster, gzip_bin):
    """A stopped worker keeps its connections open, and Dask gives it up only after minutes:
    its requests go to the other worker too once they run far longer than the others did."""
    data = text_like(16 << 20, seed=14)
    started = time.monotonic()
    try:
        status, out, err = feed_killing_a_worker(cluster, [*tool("fgzip"), "-b", "64"], data, 1 << 20,
                                                 signal.SIGSTOP)
    finally:
        cluster.workers["fpga1"].send_signal(signal.SIGCONT)
    assert (status, err) == (0, b"")
    assert run([gzip_bin, "-dc"], input=out, check=True).stdout == data
    assert time.monotonic() - started < 60  # the patience floor is 10 s; Dask's worker TTL 300 s


def test_decompression_on_the_cluster_survives_a_killed_worker(cluster, gzip_bin):
    """fgzip -d of fgzip's own output (chunks announced in the header, written to a pipe, so no
    index) decodes its chunks on the workers; one is SIGKILLed half way, the output is exact."""
    data = text_like(16 << 20, seed=13)
    packed = fgzip("-b", "64", input=data, check=True).stdout
    assert run([gzip_bin, "-dc"], input=packed, check=True).stdout == data
    status, out, err = feed_killing_a_worker(cluster, [*tool("fgzip"), "-d"], packed, 256 << 10)
    assert status == 0 and err == b"", err
    assert out == data
    assert cluster.status()["fpga0"] >= 5  # the chunks were decoded on the workers


def test_bgzf_input_is_decoded_on_the_workers(cluster):
    from octoray.formats import bgzf

    data = text_like(4 << 20, seed=15)
    before = sum(cluster.status().values())
    out = fgzip("-dc", input=bgzf.compress(data), env=with_cluster_env(cluster), check=True)
    assert (out.stdout, out.stderr) == (data, b"")
    assert sum(cluster.status().values()) - before >= 2  # batches of members ran there, not here


def test_testing_on_the_cluster_finds_damage_as_gzip_does(cluster, gzip_bin, tmp_path):
    data = text_like(4 << 20, seed=14)
    packed = bytearray(fgzip("-b", "64", input=data, check=True).stdout)
    packed[len(packed) // 2] ^= 0x40
    (tmp_path / "bad.gz").write_bytes(packed)
    ours = run([*tool("fgzip"), "-t", str(tmp_path / "bad.gz")], env=with_cluster_env(cluster))
    theirs = run([gzip_bin, "-t", str(tmp_path / "bad.gz")])
    assert ours.returncode == theirs.returncode == 1
    assert ours.stderr.replace(b"fgzip", b"gzip") == theirs.stderr


def test_losing_the_scheduler_is_a_clear_error_within_seconds(cluster):
    data = text_like(32 << 20, seed=13)
    proc = subprocess.Popen([*tool("fgzip"), "-b", "64"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=with_cluster_env(cluster))
    killed_at = []

    def kill_at_a_third(sent):
        if sent >= len(data) // 3 and not killed_at:
            cluster.scheduler.send_signal(signal.SIGKILL)
            killed_at.append(time.monotonic())

    feeder = slow_feed(proc, data, 1 << 20, 0.1, kill_at_a_third)  # the input keeps coming
    proc.stdout.read()
    err = proc.stderr.read()
    proc.wait(timeout=120)
    feeder.join(timeout=60)
    assert killed_at, err  # fgzip was still running when the scheduler was killed
    noticed = time.monotonic() - killed_at[0]
    assert proc.returncode == 1
    assert err.startswith(b"fgzip: lost the cluster at tcp://127.0.0.1:"), err
    assert b"Traceback" not in err
    assert noticed < 3.0, f"the lost scheduler was reported {noticed:.1f} s after it died"


def test_losing_the_scheduler_keeps_the_input_and_leaves_no_partial_output(cluster, tmp_path):
    fifo = tmp_path / "stream"
    os.mkfifo(fifo)
    proc = subprocess.Popen([*tool("fgzip"), "-c", str(fifo)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=with_cluster_env(cluster))
    data = text_like(8 << 20, seed=13)
    with open(fifo, "wb") as writer:
        writer.write(data[: 3 << 20])
        writer.flush()
        time.sleep(1.0)
        cluster.scheduler.send_signal(signal.SIGKILL)
        try:
            writer.write(data[3 << 20:])
        except BrokenPipeError:
            pass
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert err.startswith(b"fgzip: lost the cluster at tcp://127.0.0.1:"), err
    assert b"Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".log")) == ["scheduler.json", "stream"]


def refused_address() -> str:
    """A loopback port nobody listens on (bound, then released)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


@pytest.mark.parametrize("argv", [["fgzip"], ["fclassify"], ["octoray", "status"]])
def test_a_refused_connection_is_reported_at_once(argv):
    address = refused_address()
    program = argv[0]
    start = time.monotonic()
    result = run([*tool(program), *argv[1:], "--scheduler", address], input=b"hello\n", timeout=60)
    elapsed = time.monotonic() - start
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr == f"{program}: cannot reach the cluster at {address}: connection refused " \
                            f"(no scheduler listens on 127.0.0.1 port {address.rsplit(':', 1)[1]})\n".encode()
    assert elapsed < 2.0, f"{program} took {elapsed:.1f} s to report a refused connection"


@contextlib.contextmanager
def listener(banner: bytes | None):
    """A loopback service that accepts connections and sends `banner` (None: nothing)."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    held = []

    def accept():
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            held.append(connection)
            if banner:
                connection.sendall(banner)

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"tcp://127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()
        for connection in held:
            connection.close()


@pytest.mark.parametrize("argv", [["fgzip"], ["fclassify"], ["octoray", "status"]])
def test_a_service_that_speaks_another_protocol_is_not_a_scheduler(argv):
    """An SSH server's banner read as Dask frames once asked for exabytes: one line, at once."""
    with listener(b"SSH-2.0-OpenSSH_9.6\r\n") as address:
        start = time.monotonic()
        result = run([*tool(argv[0]), *argv[1:], "--scheduler", address], input=b"hello\n", timeout=60)
        elapsed = time.monotonic() - start
    assert (result.returncode, result.stdout) == (1, b"")
    assert result.stderr.decode() == (f"{argv[0]}: cannot reach the cluster at {address}: not a Dask scheduler "
                                      f"(what it sent is not Dask's protocol: MemoryError)\n")
    assert elapsed < 10


def test_a_service_that_accepts_and_stays_silent_is_not_a_scheduler():
    """The dashboard's port (HTTP waits for a request) once made the client wait for ever: a
    scheduler speaks first, so silence for the probe's time is a ClusterError."""
    from octoray.engine.dask_executor import probe_scheduler
    from octoray.engine.faults import ClusterError

    with listener(None) as address:
        start = time.monotonic()
        with pytest.raises(ClusterError, match="no Dask scheduler answers .* accepts connections but sends "
                                               "nothing in 1 s: .* or a scheduler that is stopped or stuck"):
            probe_scheduler(address, address, answer_timeout=1.0)
        assert time.monotonic() - start < 5


def test_a_real_scheduler_passes_the_probe(empty_cluster):
    from octoray.engine.dask_executor import probe_scheduler

    probe_scheduler(empty_cluster.address, empty_cluster.address, answer_timeout=5.0)


@pytest.mark.parametrize("address, words", [("inproc://x", "inproc:// names a scheduler inside one process"),
                                            ("tcp://127.0.0.1:99999", "99999 is not a port number (1-65535)")])
def test_addresses_no_client_can_reach_say_why(address, words):
    result = run([*tool("octoray"), "status", "--scheduler", address], timeout=60)
    assert result.returncode == 1 and words in result.stderr.decode() and result.stderr.count(b"\n") == 1


TWO_PLACES = [
    (["--scheduler", "tcp://127.0.0.1:1", "--cluster=local"], "--scheduler and --cluster each name where to run: give one"),
    (["--scheduler", "tcp://127.0.0.1:1", "--scheduler-file", "s.json"],
     "--scheduler and --scheduler-file each name where to run: give one"),
]


@pytest.mark.parametrize("argv, options, words", [
    *((["fgzip"], options, words) for options, words in TWO_PLACES),
    *((["fclassify"], options, words) for options, words in TWO_PLACES),
    (["octoray", "status"], *TWO_PLACES[1]),  # octoray status has no --cluster
])
def test_two_places_to_run_are_refused(argv, options, words):
    result = run([*tool(argv[0]), *argv[1:], *options], input=b"x", timeout=60)
    assert (result.returncode, result.stdout) == (1, b"")
    assert result.stderr.decode() == f"{argv[0]}: {words}\n"


def test_an_empty_scheduler_is_refused_not_the_embedded_default():
    result = run([*tool("octoray"), "status", "--scheduler", ""], timeout=60)
    assert (result.returncode, result.stderr) == (1, b"octoray: --scheduler needs a value, not ''\n")


@pytest.fixture
def empty_cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.stop()


def test_a_cluster_without_workers_writes_nothing_and_says_so(empty_cluster, tmp_path):
    address = empty_cluster.address
    no_workers = f"the cluster at {address} has no workers".encode()
    picture = tmp_path / "pictures"
    picture.mkdir()
    blurry_pngs(picture, 2, seed=3)
    for argv, stdin in (([*tool("fgzip")], b"hi\n"), ([*tool("fclassify"), str(picture)], b"")):
        start = time.monotonic()
        result = run([*argv, "--scheduler", address], input=stdin, timeout=60)
        elapsed = time.monotonic() - start
        assert result.returncode == 1, result.stderr
        assert result.stdout == b""  # not even a gzip header
        assert no_workers in result.stderr and result.stderr.count(b"\n") == 1, result.stderr
        assert elapsed < 8.0, f"{argv[0]} took {elapsed:.1f} s to say the cluster has no workers"
    status = run([*tool("octoray"), "status", "--scheduler", address], timeout=60)
    assert status.returncode == 1
    assert status.stdout == b""
    assert status.stderr.startswith(b"octoray: " + no_workers)


def test_file_compression_on_a_lost_cluster_leaves_no_partial_output(tmp_path):
    path = tmp_path / "precious"
    path.write_bytes(b"data" * 1000)
    result = fgzip(path, env=dict(os.environ, DASK_SCHEDULER_ADDRESS="tcp://127.0.0.1:9"), timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith(b"fgzip: cannot reach the cluster at tcp://127.0.0.1:9")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious"]


def test_with_v_the_lost_cluster_is_reported_on_a_line_of_its_own(tmp_path):
    """-v writes "NAME:\t" before the work starts; gzip begins a new line for an error then."""
    (tmp_path / "precious").write_bytes(b"data" * 1000)
    result = fgzip("-v", "--scheduler-file", tmp_path / "nope.json", "precious", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == f"precious:\t\nfgzip: cannot reach the cluster at {tmp_path / 'nope.json'}: " \
                            f"no such scheduler file\n".encode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious"]


@pytest.mark.parametrize("content", ["{}", '{"address": ""}', '{"address": 5}'])
def test_a_scheduler_file_without_an_address_says_so(tmp_path, content):
    (tmp_path / "s.json").write_text(content)
    result = run([*tool("octoray"), "status", "--scheduler-file", str(tmp_path / "s.json")], timeout=60)
    assert (result.returncode, result.stdout) == (1, b"")
    assert result.stderr.decode() == (f"octoray: cannot reach the cluster at {tmp_path / 's.json'}: "
                                      f"not a scheduler file (no address in it)\n")


def test_a_missing_scheduler_file_fails_at_once(tmp_path):
    start = time.time()
    result = fgzip("--scheduler-file", tmp_path / "nope.json", input=b"x")
    assert time.time() - start < 10
    assert result.returncode == 1
    assert result.stderr == f"fgzip: cannot reach the cluster at {tmp_path / 'nope.json'}: no such scheduler file\n".encode()
    assert result.stdout == b""


def test_in_process_local_cluster(gzip_bin):
    data = text_like(3 << 20, seed=14)
    out = fgzip("--cluster=local", "-p", "2", input=data, check=True)
    assert out.stderr == b""
    assert run([gzip_bin, "-dc"], input=out.stdout, check=True).stdout == data


def make_certificate(where: Path) -> tuple[Path, Path]:
    """A throw-away self-signed certificate for 127.0.0.1 (it is its own CA)."""
    cert, key = where / "cert.pem", where / "key.pem"
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True)
    return cert, key


def test_a_tls_cluster_works_through_dask_config_and_refuses_plain_clients(tmp_path, gzip_bin):
    cert, key = make_certificate(tmp_path)
    c = Cluster(tmp_path, tls=["--tls-ca-file", str(cert), "--tls-cert", str(cert), "--tls-key", str(key)])
    try:
        assert c.address.startswith("tls://127.0.0.1:")
        c.add_worker("tls0", 0)
        tls_env = dict(os.environ, DASK_SCHEDULER_ADDRESS=c.address,
                       DASK_DISTRIBUTED__COMM__TLS__CA_FILE=str(cert),
                       DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT=str(cert),
                       DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY=str(key))
        deadline = time.time() + 60
        while "tls0" not in run([*tool("octoray"), "status"], env=tls_env, timeout=60).stdout.decode():
            assert time.time() < deadline, (tmp_path / "tls0.log").read_text()
            time.sleep(0.5)
        data = text_like(3 << 20, seed=21)
        out = fgzip("-b", "256", input=data, env=tls_env, check=True)
        assert out.stderr == b""
        assert run([gzip_bin, "-dc"], input=out.stdout, check=True).stdout == data

        plain = c.address.replace("tls://", "tcp://")
        refused = fgzip(input=data, env=dict(os.environ, DASK_SCHEDULER_ADDRESS=plain), timeout=60)
        assert refused.returncode == 1 and refused.stdout == b""
        assert refused.stderr.startswith(f"fgzip: cannot reach the cluster at {plain}".encode()), refused.stderr
        no_certificate = fgzip(input=data, env=dict(os.environ, DASK_SCHEDULER_ADDRESS=c.address), timeout=60)
        assert no_certificate.returncode == 1 and no_certificate.stdout == b""
        assert no_certificate.stderr.startswith(f"fgzip: cannot reach the cluster at {c.address}: a tls:// scheduler needs a certificate".encode())
        assert b"Traceback" not in refused.stderr + no_certificate.stderr
    finally:
        c.stop()
