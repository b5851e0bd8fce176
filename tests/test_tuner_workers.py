"""Several tuning workers on one study: two processes share the work through a JournalFile storage
(one host) and through a real PostgreSQL server (several hosts), with no config timed twice and none lost.

Each worker is a separate Python process running ``StudyRunner`` on "torch_chunk" (real numerics) with a
fake timer that sleeps a little (so both workers are busy at once) and logs every call to a shared file.
The PostgreSQL case needs DELTALAB_TEST_POSTGRES_URL (``eval "$(bash .ci/postgres.sh)"``, as .ci/run does).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections import Counter

import optuna
import pytest
from optuna.trial import TrialState

from deltalab.tuner.storage import open_storage

CHUNK_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TIMES = {1: 5.0, 2: 4.0, 4: 3.0, 8: 2.0, 16: 1.0, 32: 1.5, 64: 2.5, 128: 3.0, 256: 4.0}  # as in WORKER

WORKER = textwrap.dedent(
    """
    import json, os, sys, time
    os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch
    from deltalab.tuner.space import config_key
    from deltalab.tuner.storage import open_storage
    from deltalab.tuner.study import StudyRunner, TuneSettings
    from deltalab.variants import Problem

    storage_url, log_path, barrier, worker_id, sampler, trials, tag = sys.argv[1:]
    TIMES = {1: 5.0, 2: 4.0, 4: 3.0, 8: 2.0, 16: 1.0, 32: 1.5, 64: 2.5, 128: 3.0, 256: 4.0}

    def timer(variant, problem, config, mode, *, family, device, warmup_ms, rep_ms):
        with open(log_path, "a") as f:  # one short O_APPEND write per call: atomic between processes
            f.write(json.dumps({"worker": worker_id, "config": config_key(config)}) + "\\n")
        time.sleep(0.25)
        return [TIMES[config["chunk_size"]]] * 3

    problem = Problem(B=1, T=16, H=2, K=16, V=16, dtype=torch.float32, device="cpu")
    settings = TuneSettings(mode="fwd", trials=int(trials), sampler=sampler, seed=int(worker_id), select=False,
                            check_max_T=16, warm_start=False, tag=tag)
    storage = open_storage(storage_url)
    # start together: both workers are up (imports done) before either asks for a trial
    open(os.path.join(barrier, worker_id), "w").close()
    deadline = time.time() + 300
    while len(os.listdir(barrier)) < 2 and time.time() < deadline:
        time.sleep(0.05)
    runner = StudyRunner("torch_chunk", problem, storage=storage, settings=settings, device="cpu", timer=timer)
    outcome = runner.run()
    print(json.dumps({"study": runner.name, "ran": outcome.ran_here}))
    """
)


def run_workers(tmp_path, storage_url: str, sampler: str, trials: int) -> tuple[str, list[dict], list[dict]]:
    """Two worker processes on one study; returns (study name, timer log, the workers' reports)."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    log = tmp_path / "timer.log"
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    tag = "test-" + uuid.uuid4().hex[:8]  # a fresh study, also in a shared PostgreSQL database
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), storage_url, str(log), str(barrier), str(i), sampler, str(trials), tag],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        for i in (1, 2)
    ]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=400)
        assert proc.returncode == 0, f"worker failed:\n{err[-3000:]}"
        reports.append(json.loads(out.strip().splitlines()[-1]))
    assert reports[0]["study"] == reports[1]["study"]
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    return reports[0]["study"], calls, reports


def check_shared_study(storage, name: str, calls: list[dict], reports: list[dict], expect_all: bool, trials: int):
    timed = Counter(c["config"] for c in calls)
    assert timed and max(timed.values()) == 1, f"a config was timed twice: {timed}"
    assert {c["worker"] for c in calls} == {"1", "2"}, "both workers should have taken part"
    assert sum(r["ran"] for r in reports) == len(calls)

    study = optuna.load_study(study_name=name, storage=storage)
    trials_ = study.get_trials()
    states = Counter(t.state for t in trials_)
    assert states[TrialState.RUNNING] == 0 and states[TrialState.WAITING] == 0  # nothing left hanging
    ok = [t for t in trials_ if t.user_attrs.get("status") == "ok"]
    ok_keys = Counter(t.user_attrs["config_key"] for t in ok)
    assert max(ok_keys.values()) == 1  # one result per config
    assert set(ok_keys) == set(timed)  # every timing was stored (none lost), and nothing else
    assert all(t.state == TrialState.FAIL for t in trials_ if t.user_attrs.get("status") == "duplicate")
    if expect_all:
        assert set(ok_keys) == {json.dumps({"chunk_size": c}, separators=(",", ":")) for c in CHUNK_SIZES}
    else:
        # the budget, plus at most one in-flight config per worker
        assert trials <= len(ok_keys) <= trials + 2
    best = min(ok, key=lambda t: t.value)
    assert best.value == min(TIMES[json.loads(key)["chunk_size"]] for key in timed)
    if expect_all:
        assert best.params == {"chunk_size": 16}


@pytest.mark.parametrize("sampler,trials", [("grid", 9), ("tpe", 5)])
def test_two_workers_share_a_journal_file_study(tmp_path, sampler, trials):
    url = "journal:" + str(tmp_path / "tune.log")
    name, calls, reports = run_workers(tmp_path, url, sampler, trials)
    check_shared_study(open_storage(url), name, calls, reports, expect_all=sampler == "grid", trials=trials)


def test_two_workers_share_a_postgresql_study(tmp_path):
    url = os.environ.get("DELTALAB_TEST_POSTGRES_URL")
    if not url:
        pytest.skip('DELTALAB_TEST_POSTGRES_URL is not set (start a server with: eval "$(bash .ci/postgres.sh)")')
    pytest.importorskip("psycopg2", reason="psycopg2 missing: .ci/postgres.sh installs psycopg2-binary")
    name, calls, reports = run_workers(tmp_path, url, "grid", 9)
    storage = open_storage(url)
    try:
        check_shared_study(storage, name, calls, reports, expect_all=True, trials=9)
    finally:
        optuna.delete_study(study_name=name, storage=storage)
