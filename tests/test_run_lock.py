"""The run lock is a lease: atomic, race-free, taken over by a requeued job on any host, never by a second live run."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import time
from pathlib import Path

import pytest

from lit_sr.config.run import LOCK_NAME, RunLock
from lit_sr.errors import ConfigError


def _plant(run_dir: Path, host: str, pid: int, job: str | None, age: float = 0.0) -> Path:
    """A lock left by another run (``age`` seconds since its last heartbeat)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    path.write_text(json.dumps({"token": "other", "job": job, "pid": pid, "host": host, "started": "earlier"}))
    if age:
        past = time.time() - age
        os.utime(path, (past, past))
    return path


def _contender(run_dir: str, start: float, results, hold: float) -> None:
    while time.time() < start:  # every contender tries at the same moment
        pass
    lock = RunLock(run_dir, ttl=60)
    try:
        lock.acquire()
    except ConfigError:
        results.put("refused")
        return
    results.put("held")
    time.sleep(hold)  # holding: the others must all have been refused by now
    lock.release()


@pytest.mark.parametrize("stale", [False, True], ids=["free", "stale_lock"])
def test_contenders_racing_for_the_lock_never_both_hold_it(tmp_path, stale):
    ctx = mp.get_context("fork")
    dead = ctx.Process(target=lambda: None)
    dead.start()
    dead.join()  # a pid that is gone: its lock is stale, every contender tries to break it
    for trial in range(12):
        run_dir = tmp_path / f"t{trial}"
        if stale:
            _plant(run_dir, socket.gethostname(), dead.pid, None)
        results = ctx.Queue()
        start = time.time() + 0.3
        procs = [ctx.Process(target=_contender, args=(str(run_dir), start, results, 0.8)) for _ in range(4)]
        for p in procs:
            p.start()
        outcomes = sorted(results.get(timeout=60) for _ in procs)
        for p in procs:
            p.join(timeout=60)
        assert outcomes == ["held", "refused", "refused", "refused"], (trial, outcomes)
        assert not (run_dir / LOCK_NAME).exists()  # released by its holder


def test_the_lock_file_is_never_seen_half_written(tmp_path, monkeypatch):
    written = []
    real_link = os.link

    def watch(src, dst):  # the moment the lock name appears, its record is already complete
        real_link(src, dst)
        written.append(json.loads(Path(dst).read_text()))

    monkeypatch.setattr(os, "link", watch)
    with RunLock(tmp_path, ttl=60) as lock:
        assert written and written[0]["token"] == lock.token and written[0]["pid"] == os.getpid()


def test_a_requeued_job_takes_over_its_lock_on_another_host(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    _plant(tmp_path, "node-a", 12345, "slurm:4242")  # fresh heartbeat: the job was just requeued elsewhere
    with RunLock(tmp_path, ttl=600) as lock:
        assert json.loads((tmp_path / LOCK_NAME).read_text())["token"] == lock.token


def test_a_live_run_of_another_job_on_another_host_is_refused_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4243")
    _plant(tmp_path, "node-a", 12345, "slurm:4242")
    with pytest.raises(ConfigError) as info:
        RunLock(tmp_path, ttl=600).acquire()
    text = str(info.value)
    assert "\n" not in text and "in use by pid 12345 on node-a (job slurm:4242" in text and "run_lock=false" in text
    assert json.loads((tmp_path / LOCK_NAME).read_text())["token"] == "other"  # untouched


def test_a_lock_without_heartbeat_past_its_ttl_is_taken_over_and_a_live_one_is_kept_fresh(tmp_path):
    _plant(tmp_path, "node-a", 12345, None, age=120)  # a node that died two minutes ago
    with pytest.raises(ConfigError):
        RunLock(tmp_path, ttl=600).acquire()  # within its lease: alive
    lock = RunLock(tmp_path, ttl=60, heartbeat=0.2)
    with lock:
        before = (tmp_path / LOCK_NAME).stat().st_mtime
        time.sleep(0.7)
        assert (tmp_path / LOCK_NAME).stat().st_mtime > before  # the heartbeat
        with pytest.raises(ConfigError):
            RunLock(tmp_path, ttl=60).acquire()  # a second run, same host, live pid: refused


def test_release_never_removes_a_lock_another_run_took_over(tmp_path):
    lock = RunLock(tmp_path, ttl=60)
    lock.acquire()
    (tmp_path / LOCK_NAME).unlink()
    _plant(tmp_path, "node-b", 1, "slurm:1")  # our lease lapsed and another run holds the folder now
    lock.release()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["host"] == "node-b"


def test_a_late_contender_never_breaks_the_lock_of_the_run_that_took_over(tmp_path):
    stale = json.loads(_plant(tmp_path, socket.gethostname(), 999_999_999, None).read_text())
    winner = RunLock(tmp_path, ttl=60)
    winner.acquire()  # broke the stale lock and holds the folder now
    late = RunLock(tmp_path, ttl=60)
    assert late._break(stale, "judged stale before the winner took over")  # the break lock was free
    assert json.loads((tmp_path / LOCK_NAME).read_text())["token"] == winner.token
    with pytest.raises(ConfigError):
        late.acquire()
    winner.release()
