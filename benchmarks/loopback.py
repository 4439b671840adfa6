"""A real Dask cluster on 127.0.0.1 for the benchmarks: `python -m dask scheduler` and
`dask worker --nthreads 1 --preload octoray.worker` processes, as a user starts them, each
logging to a file in its folder and stopped at the end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent


def tool_argv(name: str) -> list[str]:
    """How to run one of octoray's commands: beside this Python, on PATH, or from bin/."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    return [found] if found else [sys.executable, str(ROOT / "bin" / name)]


class LoopbackCluster:
    """A scheduler at once; workers as they are added (`add_worker`, then `wait_for`)."""

    def __init__(self, where: Path, env: dict):
        where.mkdir(parents=True, exist_ok=True)
        self.where, self.env = where, env
        self.file = where / "scheduler.json"
        self.procs: dict[str, subprocess.Popen] = {}
        self._start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address",
                    "127.0.0.1:0", "--scheduler-file", str(self.file), "--no-show")
        while not self.file.exists():
            time.sleep(0.1)
        time.sleep(0.3)
        self.address = json.loads(self.file.read_text())["address"]

    def _start(self, name: str, *argv: str, **env_extra: str) -> None:
        log = open(self.where / f"{name}.log", "wb")
        self.procs[name] = subprocess.Popen([sys.executable, "-m", "dask", *argv], stdout=log,
                                            stderr=subprocess.STDOUT, env=dict(self.env, **env_extra))

    def add_worker(self, name: str, **env_extra: str) -> None:
        self._start(name, "worker", self.address, "--name", name, "--nthreads", "1", "--no-dashboard",
                    "--preload", "octoray.worker", **env_extra)

    def wait_for(self, joined: Callable[[str], bool], timeout: float = 120) -> None:
        """Until `joined` holds for `octoray status`'s table."""
        deadline = time.time() + timeout
        while not joined(self.status()):
            if time.time() > deadline:
                raise RuntimeError(f"the workers did not join: {self.status()}")
            time.sleep(0.3)

    def status(self) -> str:
        return subprocess.run([*tool_argv("octoray"), "status", "--scheduler", self.address],
                              capture_output=True, text=True, env=self.env).stdout

    def cpu_seconds(self) -> dict[str, float]:
        """User + system CPU so far of each process (a worker's nanny and the worker it started)."""
        import psutil  # distributed depends on it

        def tree(pid: int) -> float:
            try:
                top = psutil.Process(pid)
                family = [top, *top.children(recursive=True)]
            except psutil.NoSuchProcess:
                return 0.0
            total = 0.0
            for each in family:
                try:
                    times = each.cpu_times()
                    total += times.user + times.system
                except psutil.NoSuchProcess:
                    pass
            return total

        return {name: tree(proc.pid) for name, proc in self.procs.items()}

    def stop(self) -> None:
        for proc in reversed(self.procs.values()):
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
