"""`ivref train` killed mid-save, out of disk, run twice on one folder, stopped by SIGTERM.

Each test runs the real command at ``ci`` size (in a subprocess where a signal or a second
process is the point), does to it what a crash, a full disk, a second user or a job
scheduler would, and checks that the last good checkpoint is whole and resumes exactly: the
losses after resuming equal an uninterrupted run's. Every run uses one thread
(``--threads 1``), so runs are bit-identical across processes.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ivref import checkpoint, cli, train

ARGS = ["train", "--scale", "ci", "--batch-size", "2", "--threads", "1"]
ENV = os.environ | {
    "OMP_NUM_THREADS": "1",
    "OMP_WAIT_POLICY": "PASSIVE",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
}
# `ivref train` with each file of step 2's checkpoint followed by a pause: the window in which
# a kill lands mid-save grows from milliseconds to about two seconds. Nothing else changes.
SLOW_SAVE = """
import sys, time
from ivref import checkpoint, cli
real = checkpoint.write_tensors
def slow(path, tensors, meta=None):
    real(path, tensors, meta)
    if ".step-00000002." in str(path):
        time.sleep(0.4)
checkpoint.write_tensors = slow
sys.exit(cli.main(sys.argv[1:]))
"""


SAVING = ".step-00000002.tmp-*/*"  # a file of step 2's checkpoint, before its folder is renamed


def _ivref(*argv: str, slow_save: bool = False) -> subprocess.Popen:
    code = ["-c", SLOW_SAVE] if slow_save else ["-m", "ivref.cli"]
    return subprocess.Popen(
        [sys.executable, *code, *argv], env=ENV, stderr=subprocess.PIPE, text=True
    )


def _wait_for(condition, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        if proc is not None and proc.poll() is not None:
            return condition()
        time.sleep(0.02)
    return False


@pytest.fixture
def one_thread():
    """`--threads 1` in this process (cli.main sets it); the old count is put back after."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[float]:
    """The losses of an uninterrupted 3-step run (checkpoints every step), one thread."""
    before = torch.get_num_threads()
    run = tmp_path_factory.mktemp("reference") / "run"
    try:
        assert cli.main([*ARGS, "--steps", "3", "--checkpoint-every", "1", "--out", str(run)]) == 0
    finally:
        torch.set_num_threads(before)
    return [r["loss"] for r in train.read_log(run)]


def _resume_losses(run: Path) -> list[float]:
    assert cli.main(["train", "--resume", "--steps", "3", "--threads", "1", "--out", str(run)]) == 0
    return [r["loss"] for r in train.read_log(run)]


@pytest.mark.slow
def test_sigkill_mid_save_keeps_the_last_good_checkpoint_which_resumes_exactly(
    tmp_path, reference, one_thread
):
    landed, tries = None, []
    for attempt in range(4):  # each try kills at a random moment while step 2 is being saved
        run = tmp_path / f"run{attempt}"
        proc = _ivref(
            *ARGS, "--steps", "3", "--checkpoint-every", "1", "--out", str(run), slow_save=True
        )
        started = _wait_for(lambda r=run: any((r / "checkpoints").glob(SAVING)), proc=proc)
        time.sleep(random.Random(attempt).uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        left = list((run / "checkpoints").glob(".step-00000002.tmp-*"))
        mid_write = started and bool(left) and not (left[0] / "config.json").exists()
        tries.append((proc.returncode, mid_write))
        if mid_write and proc.returncode == -signal.SIGKILL:
            landed = run
            break
    assert landed is not None, f"no kill landed mid-save in {tries}"
    run = landed
    assert [p.name for p in checkpoint.run_checkpoints(run)] == ["step-00000001"]
    assert checkpoint.verify(run / "checkpoints" / "step-00000001")["step"] == 1
    killed_log = [r["loss"] for r in train.read_log(run)]
    assert killed_log == reference[: len(killed_log)]  # step 2 was logged before its save
    assert _resume_losses(run) == reference
    assert not list((run / "checkpoints").glob(".step-*"))  # the killed save's folder is gone


@pytest.mark.slow
def test_a_second_trainer_is_refused_and_sigterm_saves_and_exits_143(tmp_path, capsys, one_thread):
    run = tmp_path / "run"
    first = _ivref(*ARGS, "--steps", "100000", "--checkpoint-every", "100000", "--out", str(run))
    try:
        assert _wait_for(
            lambda: len(train.read_log(run)) >= 2 if (run / "log.jsonl").exists() else False,
            proc=first,
        )
        for argv in (
            [*ARGS, "--steps", "5", "--out", str(run)],
            ["train", "--steps", "5", "--out", str(run), "--resume"],
        ):
            assert cli.main(argv) == 2
            err = capsys.readouterr().err
            assert f"is in use by pid {first.pid}: one trainer per run folder" in err
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 128 + signal.SIGTERM == 143, err
    match = re.search(r"ivref train: stopped by SIGTERM at step (\d+); saved in", err)
    assert match, err
    step = int(match.group(1))
    assert checkpoint.verify(checkpoint.latest(run))["step"] == step
    assert train.read_log(run)[-1]["step"] == step
    argv = ["train", "--resume", "--steps", str(step + 1), "--threads", "1", "--out", str(run)]
    assert cli.main(argv) == 0  # the lock went with the process


def _mount_tmpfs(point: Path, size: str) -> None:
    point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        pytest.skip(
            f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): a real full "
            "disk is not tested; test_train.py and test_errors.py simulate one"
        )


@pytest.mark.slow
def test_a_full_disk_keeps_the_last_good_checkpoint_which_resumes_exactly(
    tmp_path, reference, capsys, one_thread
):
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "6m")  # room for one ci checkpoint (about 3.8 MB), not two
    try:
        run = disk / "run"
        argv = [*ARGS, "--steps", "3", "--checkpoint-every", "1", "--out", str(run)]
        assert cli.main(argv) == 1
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if "error:" in line]
        assert len(lines) == 1 and "Traceback" not in err, err
        assert "ivref train: error: no space left on the device writing" in lines[0]
        assert "at step 2; the last good checkpoint" in lines[0]
        assert "step-00000001' is intact: free some space, then --resume" in lines[0]
        assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000001"]
        checkpoint.verify(run / "checkpoints" / "step-00000001")
        moved = shutil.copytree(run, tmp_path / "moved")  # to a disk with room
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
    assert _resume_losses(moved) == reference
