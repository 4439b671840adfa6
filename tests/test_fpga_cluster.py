"""A loopback Dask cluster of two workers, each bound to its own emulated card
(OCTORAY_ACCELERATOR=fpga-emulator, OCTORAY_DEVICE=0 and 1)."""

from __future__ import annotations

import os

import pytest

from conftest import blurry_pngs, fgzip, run, text_like, tool
from test_cluster import Cluster


@pytest.fixture
def emulated_cluster(tmp_path):
    c = Cluster(tmp_path)
    c.add_worker("card0", 0, accelerator="fpga-emulator")
    c.add_worker("card1", 1, accelerator="fpga-emulator")
    c.wait_for_workers(2)
    yield c
    c.stop()


def test_fgzip_on_two_emulated_cards(emulated_cluster, gzip_bin):
    data = text_like(12 << 20, seed=21)
    env = dict(os.environ, DASK_SCHEDULER_ADDRESS=emulated_cluster.address)
    out = fgzip("-b", "64", input=data, env=env, check=True)
    assert run([gzip_bin, "-dc"], input=out.stdout, check=True).stdout == data
    status = run([*tool("octoray"), "status", "--scheduler", emulated_cluster.address], check=True)
    rows = {line.split()[0]: line for line in status.stdout.decode().splitlines()[1:]}
    assert "fpga-emulator:0 gzip_u50+cnv_w1a1_u50" in rows["card0"]
    assert "fpga-emulator:1 gzip_u50+cnv_w1a1_u50" in rows["card1"]
    tasks = {name: int(line.split()[-1]) for name, line in rows.items()}
    assert all(n >= 3 for n in tasks.values()), tasks


def test_fclassify_on_two_emulated_cards_prints_the_cpu_labels(emulated_cluster, tmp_path):
    blurry_pngs(tmp_path, 64, seed=9)
    argv = [*tool("fclassify"), "--batch", "1", str(tmp_path)]
    on_cpu = run(argv, env=dict(os.environ, OCTORAY_ACCELERATOR="cpu"), check=True)
    on_cards = run(argv, env=dict(os.environ, DASK_SCHEDULER_ADDRESS=emulated_cluster.address), check=True)
    assert on_cards.stderr == b""
    assert on_cards.stdout == on_cpu.stdout and len(on_cpu.stdout.splitlines()) == 64
    done = emulated_cluster.status()
    assert set(done) == {"card0", "card1"} and all(n >= 2 for n in done.values()), done


def test_a_worker_whose_card_was_held_at_start_joins_once_it_is_free(tmp_path, monkeypatch, gzip_bin):
    """A worker started while its card is still held (say by a worker shutting down) joins and
    says why it cannot run yet; once the card is free it takes tasks, instead of being left
    out of every run (or the run waiting for workers that never come back)."""
    from octoray.kernels.lanes import claim_card, release

    locks = tmp_path / "locks"
    monkeypatch.setenv("OCTORAY_LOCK_DIR", str(locks))
    held = claim_card("fpga-emulator", 0)
    assert held
    c = Cluster(tmp_path, env={"OCTORAY_LOCK_DIR": str(locks)})
    try:
        c.add_worker("card0", 0, accelerator="fpga-emulator")
        c.add_worker("card1", 1, accelerator="fpga-emulator")
        c.wait_for_workers(2)
        status = run([*tool("octoray"), "status", "--scheduler", c.address], check=True)
        assert b"unavailable: accelerator 'fpga-emulator': card 0 is held by another process" in status.stdout
        release(held)
        data = text_like(12 << 20, seed=22)
        env = dict(os.environ, DASK_SCHEDULER_ADDRESS=c.address)
        out = fgzip("-b", "64", input=data, env=env, check=True)
        assert run([gzip_bin, "-dc"], input=out.stdout, check=True).stdout == data
        assert c.status()["card0"] >= 3
    finally:
        c.stop()
