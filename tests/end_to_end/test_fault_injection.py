"""Fault injection (slow): real segexp-train / segexp-table processes killed with SIGKILL at random moments --
some of them inside a checkpoint write -- and rerun with the same command until they finish.

Known answer: the killed-and-resumed training ends with weights, optimizer state, LR schedule and step
bit-identical to an uninterrupted run of the same command; the table run ends with every row and the report
written. Kills inside a write are observed directly: the write's temporary file (``.last.ckpt.<pid>.<token>.tmp``)
exists when the process is killed, and is still there (never renamed) afterwards.
"""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.helpers.runs import FAST_RUN

pytestmark = pytest.mark.slow

TRAIN = [*FAST_RUN, "trainer.max_steps=30", "trainer.val_check_interval=10", "callbacks.last.every_n_steps=2",
         "~callbacks.examples", "ckpt_path=auto"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def train_command(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "segexp.cli.train", *TRAIN, f"hydra.run.dir={run_dir}"]


def start(command: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=ENV,
                            start_new_session=True)


def wait_for(proc: subprocess.Popen, condition: Callable[[], bool], timeout_s: float = 300.0) -> bool:
    """Poll ``condition`` every millisecond while ``proc`` runs; True as soon as it holds, False if the
    process ended first."""
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None:
        if condition():
            return True
        if time.monotonic() > deadline:
            raise TimeoutError("the process neither finished nor reached the kill point")
        time.sleep(0.001)
    return False


def kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def temporaries(run_dir: Path) -> list[Path]:
    folder = run_dir / "checkpoints"
    return list(folder.glob(".*.tmp")) if folder.is_dir() else []


def saves_done(run_dir: Path) -> Callable[[], int]:
    """How many times last.ckpt has been replaced since this was called (by its inode changing)."""
    last = run_dir / "checkpoints" / "last.ckpt"
    seen: list[int] = []

    def count() -> int:
        try:
            inode = last.stat().st_ino
        except FileNotFoundError:
            return len(seen)
        if not seen or seen[-1] != inode:
            seen.append(inode)
        return len(seen)

    return count


def final_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


def assert_identical(a: object, b: object, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_sigkill_anywhere_then_rerun_ends_bit_identical_to_an_uninterrupted_run(tmp_path: Path) -> None:
    reference_dir, killed_dir, log = tmp_path / "reference", tmp_path / "killed", tmp_path / "log.txt"
    assert start(train_command(reference_dir), log).wait() == 0
    rng = random.Random(0)
    kills = {"inside a checkpoint write": 0, "between writes": 0}
    plan = ["write", "random", "write", "random"]
    runs = 0
    while True:
        runs += 1
        proc = start(train_command(killed_dir), log)
        if not plan:
            assert proc.wait() == 0, log.read_text()[-3000:]
            break
        where = plan.pop(0)
        if where == "write":
            hit = wait_for(proc, lambda: bool(temporaries(killed_dir)))
        else:
            done, target = saves_done(killed_dir), rng.randint(1, 3)
            hit = wait_for(proc, lambda done=done, target=target: done() > target)
            time.sleep(rng.uniform(0.0, 0.3))
        if not hit:  # it finished before the kill point
            assert proc.returncode == 0
            break
        kill(proc)
        if where == "write":
            assert temporaries(killed_dir), "the write finished before the kill landed"
            kills["inside a checkpoint write"] += 1
        else:
            kills["between writes"] += 1
        if (killed_dir / "checkpoints" / "last.ckpt").exists():  # never torn: the old or the new state
            torch.load(killed_dir / "checkpoints" / "last.ckpt", weights_only=True)
        assert not (killed_dir / "metrics.json").exists()
    assert kills["inside a checkpoint write"] >= 1 and sum(kills.values()) >= 3, kills
    reference, resumed = final_state(reference_dir), final_state(killed_dir)
    assert resumed["global_step"] == reference["global_step"] == 30
    assert_identical(reference["state_dict"], resumed["state_dict"], "state_dict")
    assert_identical(reference["optimizer_states"], resumed["optimizer_states"], "optimizer_states")
    assert_identical(reference["lr_schedulers"], resumed["lr_schedulers"], "lr_schedulers")
    assert not temporaries(killed_dir)
    print(f"\nfault injection: {sum(kills.values())} SIGKILLs ({kills}), {runs} runs, final state bit-identical")


def test_sigterm_through_the_cli_saves_exits_75_and_resumes(tmp_path: Path) -> None:
    run_dir, log = tmp_path / "run", tmp_path / "log.txt"
    proc = start(train_command(run_dir), log)
    done = saves_done(run_dir)
    assert wait_for(proc, lambda: done() >= 2)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) == 75, log.read_text()[-3000:]
    assert "pre-empted: SIGTERM at step" in log.read_text()
    step = final_state(run_dir)["global_step"]
    assert 0 < step < 30
    assert start(train_command(run_dir), log).wait() == 0
    assert final_state(run_dir)["global_step"] == 30


def table_command() -> list[str]:
    entry = "import sys; from segexp.cli.table import main; sys.exit(main())"
    return [sys.executable, "-c", entry, "run", "msattn.t2", "--profile", "smoke"]


def test_a_table_run_killed_mid_row_and_mid_report_completes_on_rerun(tmp_path: Path) -> None:
    env_dir, log = tmp_path / "out", tmp_path / "log.txt"
    ENV["SEGEXP_OUTPUT_DIR"] = str(env_dir)
    try:
        rows = env_dir / "tables" / "msattn.t2" / "smoke"
        reports = env_dir / "tables" / "reports"
        proc = start(table_command(), log)
        assert wait_for(proc, lambda: (rows / "multi_stage" / "seed0" / ".hydra").is_dir())  # second row running
        kill(proc)
        assert (rows / "base_model" / "seed0" / "metrics.json").is_file()
        assert not (rows / "multi_stage" / "seed0" / "metrics.json").exists()
        proc = start(table_command(), log)
        assert wait_for(proc, lambda: reports.is_dir() and any(reports.iterdir()))  # the report is being written
        kill(proc)
        assert start(table_command(), log).wait() == 0, log.read_text()[-3000:]
    finally:
        del ENV["SEGEXP_OUTPUT_DIR"]
    with (reports / "msattn.t2.smoke.csv").open() as f:
        statuses = {row["row"]: row["status"] for row in csv.DictReader(f)}
    assert statuses == dict.fromkeys(["base_model", "multi_stage", "multi_stage_dilations", "ours"], "ok")
    assert (reports / "msattn.t2.smoke.png").stat().st_size > 0
    assert not list(reports.glob(".*.tmp"))
