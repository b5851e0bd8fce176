"""The tuner: search (grid / TPE), numerics gate, dedupe, resume, noise-aware selection, export and the
op's auto-dispatch from exported files.

Timings are faked (an injected timer returns fixed times per config), so these tests never depend on
this machine's speed; numerics use the real ``harness.numerics.check_variant`` on "torch_chunk" and on
variants registered here (one of them deliberately wrong for one config).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from deltalab.harness.numerics import random_inputs
from deltalab.tuner import export as tuner_export
from deltalab.tuner.measure import harness_checker
from deltalab.tuner.precompile import Precompiler, warm_problem
from deltalab.tuner.select import interleaved_rounds, select_winner
from deltalab.tuner.space import SearchSpace, config_key, paper_shapes, parse_shape
from deltalab.tuner.storage import open_storage, resolve_url
from deltalab.tuner.strategies import choose
from deltalab.tuner.study import StudyRunner, TuneSettings, numerics_problem
from deltalab.variants import Problem, delta_rule, registry, tuned
from deltalab.variants.common import autograd_backward
from deltalab.variants.torch_chunk import torch_chunk_forward

PROBLEM = Problem(B=1, T=24, H=2, K=16, V=16, dtype=torch.float32, device="cpu")
SEARCH_REP_MS, ROUND_REP_MS = 7.0, 3.0  # tell search timings from selection re-timings apart


class FakeTimer:
    """Returns ``times[config["chunk_size"]]`` ms (5 samples, +-0.1 %); records every call."""

    def __init__(self, times: dict[int, float], interrupt_at: int | None = None):
        self.times = times
        self.calls: list[tuple[str, float]] = []
        self.interrupt_at = interrupt_at

    def __call__(self, variant, problem, config, mode, *, family, device, warmup_ms, rep_ms):
        if self.interrupt_at is not None and len(self.calls) + 1 == self.interrupt_at:
            raise KeyboardInterrupt
        self.calls.append((config_key(config), rep_ms))
        base = self.times[config["chunk_size"]]
        return [base * (1 + 0.001 * d) for d in (-1, 0, 1, 0, 0)]

    def search_calls(self) -> list[str]:
        return [key for key, rep in self.calls if rep == SEARCH_REP_MS]


def settings(**kw) -> TuneSettings:
    base = dict(trials=64, sampler="auto", seed=0, rounds=3, rep_ms=SEARCH_REP_MS, round_rep_ms=ROUND_REP_MS,
                check_max_T=64, warm_start=False)
    base.update(kw)
    return TuneSettings(**base)


def runner(variant, storage, timer, problem=PROBLEM, checker=None, **kw) -> StudyRunner:
    return StudyRunner(variant, problem, storage=storage, settings=settings(**kw), device="cpu", timer=timer,
                       checker=checker)


def ok_configs(study) -> list[dict]:
    return [t.params for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.user_attrs.get("status") == "ok"]


# ---------------------------------------------------------------------------------------------- variants


def _register(name, *, space, default, wrong=None, constraint=None, record=None):
    """A CPU variant wrapping torch_chunk: ``wrong`` chunk size computes o * 1.5; ``constraint`` chunk
    size is rejected by the constraints; ``record`` collects the configs that reach the forward."""

    def forward(q, k, v, beta, *, scale, initial_state, output_final_state, cu_seqlens, config, block_size):
        if record is not None:
            record.append(dict(config))
        o, h = torch_chunk_forward(q, k, v, beta, scale=scale, initial_state=initial_state,
                                   output_final_state=output_final_state, cu_seqlens=cu_seqlens, config=config,
                                   block_size=block_size)
        if config["chunk_size"] == wrong:
            o = o * 1.5
        return o, h

    def constraints(config, problem):
        return "chunk size rejected by the test's constraint" if config["chunk_size"] == constraint else None

    registry.register(
        name, backward=autograd_backward(forward), devices=("cpu",), dtypes=(torch.float32, torch.float64),
        space={"chunk_size": space}, default_config={"chunk_size": default}, constraints=constraints,
    )(forward)


@pytest.fixture
def broken_variant():
    _register("tuner_broken", space=(4, 8, 16, 32), default=8, wrong=4, constraint=32)
    yield "tuner_broken"
    registry.unregister("tuner_broken")


@pytest.fixture
def recording_variant():
    record: list[dict] = []
    _register("tuner_recording", space=(8, 16, 32), default=32, record=record)
    yield "tuner_recording", record
    registry.unregister("tuner_recording")
    tuned.clear_cache()


@pytest.fixture
def storage():
    # in memory: the studies here are single-process (storage files are tested below and in
    # test_tuner_workers.py), and SQLite's commits are slow on a busy CI disk
    return optuna.storages.InMemoryStorage()


# ---------------------------------------------------------------------------------------------- space etc.


def test_space_shapes_and_strategy_choice():
    assert parse_shape("2x4096x16x128") == {"B": 2, "T": 4096, "H": 16, "K": 128, "V": 128, "block_size": 128}
    assert parse_shape("1x100x4x64x32/16")["block_size"] == 16
    for bad in ("2x4096x16", "0x1x1x1", "1x8x1x64/48"):
        with pytest.raises(ValueError, match="shape"):
            parse_shape(bad)
    shapes = paper_shapes(16384, 2048, [512, 16384], [64, 128])
    assert [(s["B"], s["T"], s["H"], s["K"]) for s in shapes] == [(32, 512, 32, 64), (1, 16384, 32, 64),
                                                                  (32, 512, 16, 128), (1, 16384, 16, 128)]
    space = SearchSpace(registry.get("torch_chunk"), PROBLEM)
    points = list(space.points())
    assert points[0] == {"chunk_size": 64} and len(points) == space.size == 9
    assert len({config_key(p) for p in points}) == 9
    assert config_key({"b": 1, "a": "x"}) == '{"a":"x","b":1}'
    assert choose("auto", space, budget=9) == "grid" and choose("auto", space, budget=8) == "tpe"
    with pytest.raises(ValueError, match="sampler"):
        choose("annealing", space, budget=9)
    with pytest.raises(ValueError, match="mode"):
        TuneSettings(mode="forward")


def test_storage_urls(tmp_path):
    assert resolve_url(str(tmp_path / "a.log")) == "journal:" + str(tmp_path / "a.log")
    assert resolve_url("journal:" + str(tmp_path / "b")) == "journal:" + str(tmp_path / "b")
    assert resolve_url(str(tmp_path / "c.db")) == "sqlite:///" + str(tmp_path / "c.db")
    assert resolve_url("postgresql+psycopg2://u:pw@h/db") == "postgresql+psycopg2://u:pw@h/db"
    assert resolve_url(None).endswith("out/tune.db")
    with pytest.raises(ValueError, match="storage"):
        resolve_url(str(tmp_path / "plain"))
    journal = open_storage(str(tmp_path / "sub" / "j.log"))
    optuna.create_study(study_name="x", storage=journal)
    assert optuna.get_all_study_names(open_storage(str(tmp_path / "sub" / "j.log"))) == ["x"]


def test_selection_is_noise_aware():
    configs = {k: {"c": k} for k in ("a", "b", "c")}
    # b is 10 % faster than a in every round: b wins although a is the default
    sel = select_winner({"a": [1.0, 1.02, 0.99, 1.01], "b": [0.9, 0.91, 0.9, 0.92]}, configs, default_key="a")
    assert sel.winner_key == "b" and sel.contenders == ["b"] and sel.speedup == pytest.approx(1.005 / 0.905, rel=1e-6)
    # 0.3 % apart, within the noise: the default keeps its place
    sel = select_winner({"a": [1.0, 1.01, 0.99, 1.0], "b": [0.997, 1.006, 0.995, 0.996]}, configs, default_key="a")
    assert sel.fastest_key == "b" and set(sel.contenders) == {"a", "b"} and sel.winner_key == "a"
    # a tie without the default: the smallest key, deterministically
    sel = select_winner({"c": [0.995, 1.0, 1.0], "b": [1.0, 1.0, 1.002]}, configs)
    assert sel.winner_key == "b"
    # large spread: c is faster on median but not beyond the spread in 3 rounds of 4
    sel = select_winner({"b": [1.0, 1.0, 1.0, 1.0], "c": [0.7, 1.3, 0.8, 1.2]}, configs)
    assert set(sel.contenders) == {"b", "c"} and sel.winner_key == "b"
    # interleaving: every config once per round, in order
    order = []
    timings = interleaved_rounds([{"c": 1}, {"c": 2}], lambda cfg: order.append(cfg["c"]) or float(cfg["c"]), 3)
    assert order == [1, 2, 1, 2, 1, 2] and timings == {'{"c":1}': [1.0] * 3, '{"c":2}': [2.0] * 3}
    with pytest.raises(ValueError):
        select_winner({"a": [1.0], "b": [1.0, 2.0]}, configs)


# ---------------------------------------------------------------------------------------------- studies


TORCH_CHUNK_TIMES = {1: 5.0, 2: 4.0, 4: 3.0, 8: 2.0, 16: 1.0, 32: 1.5, 64: 2.5, 128: 3.0, 256: 4.0}


def test_grid_study_finds_the_known_best_config(storage):
    timer = FakeTimer(TORCH_CHUNK_TIMES)
    study_runner = runner("torch_chunk", storage, timer, sampler="grid")
    outcome = study_runner.run()
    assert outcome.strategy == "grid"
    assert outcome.winner == {"chunk_size": 16}
    assert outcome.counts == {"ok": 9, "invalid": 0, "duplicate": 0}
    # every config timed exactly once in the search, the default first (warm start)
    search = timer.search_calls()
    assert sorted(search) == sorted(config_key({"chunk_size": c}) for c in TORCH_CHUNK_TIMES)
    assert search[0] == config_key({"chunk_size": 64})
    # selection: top 3 (16, 32, 8) and the default (64), interleaved over 3 rounds
    rounds = [key for key, rep in timer.calls if rep == ROUND_REP_MS]
    assert len(rounds) == 4 * 3 and rounds[:4] == rounds[4:8] == rounds[8:]
    assert outcome.selection.speedup == pytest.approx(2.5, rel=1e-3)
    stored = study_runner.study.user_attrs["selection"]
    assert stored["winner"] == {"chunk_size": 16} and stored["rounds"] == 3
    # a rerun of a finished study re-times nothing in the search
    again = FakeTimer(TORCH_CHUNK_TIMES)
    assert runner("torch_chunk", storage, again, sampler="grid", select=False).run().counts["ok"] == 9
    assert again.calls == []


def test_tpe_study_respects_budget_and_never_retimes(storage):
    timer = FakeTimer(TORCH_CHUNK_TIMES)
    study_runner = runner("torch_chunk", storage, timer, sampler="tpe", trials=5, select=False)
    outcome = study_runner.run()
    assert outcome.strategy == "tpe"
    search = timer.search_calls()
    assert len(search) == len(set(search)) == 5  # five distinct configs, none timed twice
    assert search[0] == config_key({"chunk_size": 64})  # the default config is queued first
    assert outcome.best_ms == min(TORCH_CHUNK_TIMES[json.loads(k)["chunk_size"]] for k in search)
    dups = [t for t in study_runner.study.get_trials() if t.user_attrs.get("status") == "duplicate"]
    assert all(t.state == TrialState.FAIL and "duplicate_of" in t.user_attrs for t in dups)


def test_wrong_numbers_and_constraints_are_rejected_and_never_exported(storage, broken_variant, tmp_path):
    checked = []

    def checker(variant, problem, config, **kw):
        checked.append(config["chunk_size"])
        return harness_checker(variant, problem, config, **kw)

    # the wrong config (4) and the rejected one (32) would be the fastest
    timer = FakeTimer({4: 0.5, 8: 2.0, 16: 1.0, 32: 0.1})
    study_runner = runner(broken_variant, storage, timer, checker=checker, sampler="grid")
    outcome = study_runner.run()
    assert outcome.winner == {"chunk_size": 16}
    trials = {t.params["chunk_size"]: t for t in study_runner.study.get_trials() if t.user_attrs.get("status") != "duplicate"}
    assert trials[4].state == TrialState.PRUNED and trials[4].user_attrs["stage"] == "numerics"
    assert "o:" in trials[4].user_attrs["reason"] and trials[4].user_attrs["errors"]["o"] > 0.1
    assert 32 not in trials  # the grid holds only points that pass the constraints
    timed = {json.loads(k)["chunk_size"] for k, _ in timer.calls}
    assert timed == {8, 16}  # neither invalid config was ever timed
    assert outcome.invalid_stages == {"numerics": 1}

    files = tuner_export.export(storage, tmp_path / "configs.json")
    entries = json.loads(files[0].path.read_text())["entries"]
    assert [e["config"] for e in entries] == [{"chunk_size": 16}]

    # a queued config that breaks the constraints (e.g. a warm start from an older export) is recorded
    # as invalid before anything runs, and does not count against the budget
    other = optuna.storages.InMemoryStorage()
    study_runner = runner(broken_variant, other, FakeTimer({4: 0.5, 8: 2.0, 16: 1.0, 32: 0.1}), checker=checker,
                          sampler="random", trials=2, select=False)
    study_runner.study.enqueue_trial({"chunk_size": 32})
    checked.clear()
    outcome = study_runner.run()
    (rejected,) = [t for t in study_runner.study.get_trials() if t.params == {"chunk_size": 32}]
    assert rejected.state == TrialState.PRUNED and rejected.user_attrs["stage"] == "constraint"
    assert "rejected by the test" in rejected.user_attrs["reason"]
    assert 32 not in checked
    assert outcome.counts["ok"] + outcome.invalid_stages.get("numerics", 0) == 2


def test_interrupted_study_keeps_finished_trials_and_resumes(storage):
    timer = FakeTimer(TORCH_CHUNK_TIMES, interrupt_at=3)
    with pytest.raises(KeyboardInterrupt):
        runner("torch_chunk", storage, timer, sampler="grid", select=False).run()
    first = [key for key, _ in timer.calls]
    assert len(first) == 2
    study = optuna.load_study(study_name=runner("torch_chunk", storage, timer, sampler="grid").name, storage=storage)
    states = [t.state for t in study.get_trials()]
    assert states.count(TrialState.COMPLETE) == 2 and TrialState.RUNNING not in states
    assert any(t.state == TrialState.FAIL and t.user_attrs.get("status") == "interrupted" for t in study.get_trials())

    resumed = FakeTimer(TORCH_CHUNK_TIMES)
    outcome = runner("torch_chunk", storage, resumed, sampler="grid", select=False).run()
    assert outcome.counts["ok"] == 9 and outcome.best_config == {"chunk_size": 16}
    second = resumed.search_calls()
    assert len(second) == 7 and not set(second) & set(first)  # nothing timed twice across the runs


# ---------------------------------------------------------------------------------------------- export + dispatch


def _call_auto(T=40, seed=1, config=None):
    problem = Problem(B=1, T=T, H=2, K=16, V=16, dtype=torch.float32, device="cpu")
    x = random_inputs(problem, seed=seed)
    o, _ = delta_rule(x.q, x.k, x.v, x.beta, initial_state=x.initial_state, variant="auto", config=config)
    assert torch.isfinite(o).all()


def test_export_then_auto_dispatch_uses_the_exported_config(storage, recording_variant, tmp_path, monkeypatch):
    name, record = recording_variant
    outcome = runner(name, storage, FakeTimer({8: 3.0, 16: 1.0, 32: 2.0})).run()
    assert outcome.winner == {"chunk_size": 16}
    path = tmp_path / "exported" / "cpu.json"
    files = tuner_export.export(storage, path)
    assert [f.path for f in files] == [path]
    data = json.loads(path.read_text())
    assert data["schema_version"] == tuned.SCHEMA_VERSION
    assert data["device"]["name"] == "cpu" and data["triton"] == tuned.device_identity("cpu").triton
    (entry,) = data["entries"]
    assert entry["variant"] == name and entry["config"] == {"chunk_size": 16} and entry["chunk_size"] == 16
    assert (entry["dtype"], entry["K"], entry["V"], entry["block_size"], entry["T_bucket"]) == ("float32", 16, 16, 16, 32)
    assert entry["speedup_vs_default"] == pytest.approx(2.0, rel=1e-2)
    assert entry["selected_by"].startswith("interleaved")

    # without the file, "auto" on CPU follows the rule (torch_chunk): the recording variant sees nothing
    record.clear()  # (the study's numerics checks ran it)
    monkeypatch.delenv(tuned.ENV_VAR, raising=False)
    tuned.clear_cache()
    _call_auto()
    assert record == []
    # with it alone: the results never timed the rule's choice (torch_chunk) here, so they cannot say
    # the recording variant beats it -- auto keeps the rule
    monkeypatch.setenv(tuned.ENV_VAR, str(path.parent))
    tuned.clear_cache()
    _call_auto()
    assert record == []
    # once torch_chunk is tuned too (slower, 5 ms), the recording variant is the fastest for this bucket
    runner("torch_chunk", storage, FakeTimer({c: 5.0 for c in TORCH_CHUNK_TIMES}), select=False).run()
    tuner_export.export(storage, path)
    assert sorted(e["variant"] for e in json.loads(path.read_text())["entries"]) == sorted([name, "torch_chunk"])
    tuned.clear_cache()
    _call_auto()
    assert record == [{"chunk_size": 16}]
    _call_auto(T=300)  # another bucket: the nearest one's config
    assert record[-1] == {"chunk_size": 16}
    _call_auto(config={"chunk_size": 8})  # a given config wins over the tuned one
    assert record[-1] == {"chunk_size": 8}
    assert tuned.loaded_files("cpu") == (str(path),)


def test_export_merges_and_is_read_once(storage, recording_variant, tmp_path, monkeypatch):
    name, record = recording_variant
    runner(name, storage, FakeTimer({8: 3.0, 16: 1.0, 32: 2.0}), select=False).run()
    path = tmp_path / "cpu.json"
    tuner_export.export(storage, path)
    # a second study (another length) merges into the same file
    other = Problem(B=1, T=200, H=2, K=16, V=16, dtype=torch.float32, device="cpu")
    other_storage = optuna.storages.InMemoryStorage()
    runner(name, other_storage, FakeTimer({8: 1.0, 16: 2.0, 32: 3.0}), problem=other, select=False).run()
    (written,) = tuner_export.export(other_storage, path)
    assert written.merged == 1
    entries = {e["T_bucket"]: e["config"] for e in json.loads(path.read_text())["entries"]}
    assert entries == {32: {"chunk_size": 16}, 256: {"chunk_size": 8}}
    monkeypatch.setenv(tuned.ENV_VAR, str(path))
    tuned.clear_cache()
    record.clear()
    variant = registry.get(name)
    assert tuned.lookup_config(variant, Problem(1, 50, 2, 16, 16, torch.float32, device="cpu")) == {"chunk_size": 16}
    assert tuned.lookup_config(variant, Problem(1, 250, 2, 16, 16, torch.float32, device="cpu")) == {"chunk_size": 8}
    assert tuned.lookup_config(variant, Problem(1, 50, 2, 32, 16, torch.float32, device="cpu")) is None  # other K
    # read once: a changed file is not seen until the cache is cleared
    path.write_text("{}")
    assert tuned.lookup_config(variant, Problem(1, 50, 2, 16, 16, torch.float32, device="cpu")) == {"chunk_size": 16}


@pytest.mark.parametrize("field,value", [("device", "NVIDIA Z100"), ("triton", "0.0.1")])
def test_stale_file_is_ignored_with_one_warning(recording_variant, tmp_path, monkeypatch, field, value):
    name, record = recording_variant
    ident = tuned.device_identity("cpu")
    entry = {"family": "delta_rule", "variant": name, "dtype": "float32", "K": 16, "V": 16, "block_size": 16,
             "T_bucket": 64, "mode": "fwd+bwd", "B": 1, "T": 40, "H": 2, "config": {"chunk_size": 8}, "median_ms": 1.0}
    data = {"schema_version": 1, "device": {"name": "cpu", "slug": "cpu", "compute_capability": None},
            "triton": ident.triton,
            # the rule's choice (torch_chunk) timed too, slower: auto may pick the recording variant
            "entries": [entry, dict(entry, variant="torch_chunk", config={"chunk_size": 16}, median_ms=5.0)]}
    if field == "device":
        data["device"] = {"name": value, "slug": tuned.slugify(value), "compute_capability": "9.0"}
    else:
        data["triton"] = value
    path = tmp_path / f"stale-{field}.json"
    path.write_text(json.dumps(data))
    monkeypatch.setenv(tuned.ENV_VAR, str(path))
    tuned.clear_cache()
    with pytest.warns(UserWarning, match=f"ignoring tuned configs .*{value}"):
        _call_auto()
    assert record == []  # not dispatched to the stale file's variant
    assert tuned.lookup_config(registry.get(name), Problem(1, 40, 2, 16, 16, torch.float32, device="cpu")) is None
    tuned.clear_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning for the same file would raise here
        _call_auto()
    # the same file made here is used
    data["device"], data["triton"] = {"name": "cpu", "slug": "cpu", "compute_capability": None}, ident.triton
    path.write_text(json.dumps(data))
    tuned.clear_cache()
    _call_auto()
    assert record == [{"chunk_size": 8}]


def _export_file(path, variant, configs_by_bucket, triton=None, fwd_configs_by_bucket=None):
    """An export for the CPU: fwd+bwd entries, and forward-only ones from ``fwd_configs_by_bucket``."""
    ident = tuned.device_identity("cpu")
    entries = [
        {"family": "delta_rule", "variant": variant, "dtype": "float32", "K": 16, "V": 16, "block_size": 16,
         "T_bucket": bucket, "mode": mode, "B": 1, "T": bucket, "H": 2, "config": config, "median_ms": 1.0}
        for mode, by_bucket in (("fwd+bwd", configs_by_bucket), ("fwd", fwd_configs_by_bucket or {}))
        for bucket, config in by_bucket.items()
    ]
    path.write_text(json.dumps({"schema_version": 1, "device": {"name": "cpu", "slug": "cpu", "compute_capability": None},
                                "triton": triton or ident.triton, "entries": entries}))


def test_warm_start_queues_the_default_and_earlier_exports(storage, recording_variant, tmp_path, monkeypatch):
    name, _ = recording_variant
    monkeypatch.delenv(tuned.ENV_VAR, raising=False)
    earlier = tmp_path / "earlier.json"
    _export_file(earlier, name, {32: {"chunk_size": 8}}, triton="0.0.1")  # another Triton: still a good start
    timer = FakeTimer({8: 3.0, 16: 1.0, 32: 2.0})
    runner(name, storage, timer, sampler="tpe", trials=2, select=False, warm_start=True,
           warm_start_paths=(earlier,)).run()
    assert timer.search_calls() == [config_key({"chunk_size": 32}), config_key({"chunk_size": 8})]


def test_entries_that_no_longer_fit_the_variant_are_skipped(recording_variant, tmp_path, monkeypatch):
    name, record = recording_variant
    path = tmp_path / "old.json"
    _export_file(path, name, {32: {"chunk_size": 7}, 64: {"block_v": 16}})  # not in today's space
    monkeypatch.setenv(tuned.ENV_VAR, str(path))
    tuned.clear_cache()
    with pytest.warns(UserWarning, match="ignoring tuned configs"):
        assert tuned.lookup_config(registry.get(name), Problem(1, 24, 2, 16, 16, torch.float32, device="cpu")) is None
    assert tuned.best_variant(Problem(1, 24, 2, 16, 16, torch.float32, device="cpu"), "delta_rule") is None
    _call_auto()  # falls back to the rule, no error
    assert record == []


# ---------------------------------------------------------------------------------------------- precompile + CLI


def test_precompile_pool_runs_configs_in_worker_processes():
    problem = Problem(B=3, T=1000, H=2, K=16, V=16, dtype=torch.float32, device="cpu")
    small = warm_problem(problem)
    assert (small.B, small.H, small.K, small.V, small.T % 128) == (1, 2, 16, 16, 1000 % 128) and small.T < 400
    assert numerics_problem(problem, 512).T == 512 + 1000 % 128
    pool = Precompiler("cpu", jobs=1)
    assert not pool.enabled and "skipped" in pool.note
    assert pool.warm("delta_rule", "torch_chunk", problem, [{"chunk_size": 8}], "fwd") == {'{"chunk_size":8}': None}
    pool.enabled = True  # exercise the process pool on CPU (it is a no-op there by default)
    with pool:
        verdicts = pool.warm("delta_rule", "torch_chunk", problem, [{"chunk_size": 8}, {"chunk_size": 3}], "fwd+bwd")
    assert verdicts['{"chunk_size":8}'] is None
    stage, reason = verdicts['{"chunk_size":3}']
    assert stage == "error" and "chunk_size=3 is not allowed" in reason


def test_cli_tune_then_export(tmp_path):
    from typer.testing import CliRunner

    from deltalab.harness.cli import app

    db = tmp_path / "t.db"
    result = CliRunner().invoke(app, [
        "tune", "--variant", "torch_chunk", "--device", "cpu", "--dtype", "float32", "--shape", "1x32x2x16",
        "--trials", "2", "--sampler", "random", "--seed", "0", "--storage", str(db), "--no-progress", "--mode", "fwd",
        "--warmup-ms", "1", "--rep-ms", "2", "--rounds", "2", "--top-k", "1", "--json", str(tmp_path / "o.json"),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "best versus default" in result.output
    (row,) = json.loads((tmp_path / "o.json").read_text())
    assert row["counts"]["ok"] == 2 and row["winner_ms"] > 0 and row["winner"]["chunk_size"] in (1, 2, 4, 8, 16, 32, 64, 128, 256)
    out = tmp_path / "exp.json"
    result = CliRunner().invoke(app, ["export", "--storage", str(db), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["entries"][0]["config"] == row["winner"]
    result = CliRunner().invoke(app, ["export", "--storage", str(tmp_path / "empty.db"), "--out", str(out)])
    assert result.exit_code == 1 and "no study" in result.output
    result = CliRunner().invoke(app, ["tune", "--variant", "torch_chunk", "--device", "cpu", "--keys", "chunk_size,warps"])
    assert result.exit_code == 2 and "--keys: warps not in the space of torch_chunk" in result.output


def test_inference_calls_prefer_forward_measured_configs(recording_variant, tmp_path, monkeypatch):
    """An export with a fwd+bwd and a forward-only entry for one bucket: a call that will be
    differentiated runs the fwd+bwd config, forward and backward; a call under no_grad, or whose inputs
    do not require grad, runs the forward-measured one. With one kind only, every call uses it."""
    name, record = recording_variant
    path = tmp_path / "tuned.json"
    _export_file(path, name, {32: {"chunk_size": 16}}, fwd_configs_by_bucket={32: {"chunk_size": 8}})
    monkeypatch.setenv(tuned.ENV_VAR, str(path))
    tuned.clear_cache()
    problem = Problem(B=1, T=40, H=2, K=16, V=16, dtype=torch.float32, device="cpu")
    x = random_inputs(problem, seed=4)
    leaves = [t.clone().requires_grad_() for t in (x.q, x.k, x.v, x.beta)]

    with torch.no_grad():
        delta_rule(*leaves, variant=name)
    assert record == [{"chunk_size": 8}]
    delta_rule(x.q, x.k, x.v, x.beta, variant=name)  # grad enabled, nothing requires it
    assert record[-1] == {"chunk_size": 8}
    record.clear()
    o, _ = delta_rule(*leaves, variant=name)
    o.sum().backward()
    assert record and all(config == {"chunk_size": 16} for config in record), record  # forward and backward
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in leaves)

    assert tuned.lookup_config(registry.get(name), problem, grad=False) == {"chunk_size": 8}
    assert tuned.lookup_config(registry.get(name), problem, grad=True) == {"chunk_size": 16}
    _export_file(path, name, {32: {"chunk_size": 16}})  # fwd+bwd only: inference uses it too
    tuned.clear_cache()
    assert tuned.lookup_config(registry.get(name), problem, grad=False) == {"chunk_size": 16}


def test_auto_skips_tuned_variants_whose_backward_refuses(recording_variant, tmp_path, monkeypatch):
    """An export naming a variant whose backward refuses the problem (registry backward_limit) is not
    what auto picks: the call may be differentiated."""
    name, _ = recording_variant
    path = tmp_path / "tuned.json"
    _export_file(path, name, {32: {"chunk_size": 16}})
    monkeypatch.setenv(tuned.ENV_VAR, str(path))
    tuned.clear_cache()
    problem = Problem(1, 24, 2, 16, 16, torch.float32, device="cpu")
    assert tuned.best_variant(problem, "delta_rule") == name
    # results that never timed auto's rule choice cannot say another variant beats it
    assert tuned.best_variant(problem, "delta_rule", incumbent="torch_chunk") is None
    assert tuned.best_variant(problem, "delta_rule", incumbent=name) == name
    monkeypatch.setattr(registry.get(name), "backward_limit", lambda p: "refused for the test")
    tuned.clear_cache()
    assert tuned.best_variant(problem, "delta_rule") is None


def test_keys_restrict_the_search_and_name_their_own_study(storage):
    """``keys``: only the listed keys are searched, the others stay at their defaults (what reaches the
    forward), and the restricted search is a study of its own. On the real chunk space too."""
    record: list[dict] = []

    def forward(q, k, v, beta, *, config, **kw):
        record.append(dict(config))
        return torch_chunk_forward(q, k, v, beta, config={"chunk_size": config["chunk_size"]}, **kw)

    name = "tuner_two_keys"
    registry.register(
        name, backward=autograd_backward(forward), devices=("cpu",), dtypes=(torch.float32, torch.float64),
        space={"chunk_size": (8, 16, 32), "pad": (0, 1, 2)}, default_config={"chunk_size": 32, "pad": 0},
    )(forward)
    try:
        study = runner(name, storage, FakeTimer({8: 3.0, 16: 1.0, 32: 2.0}), keys=("chunk_size", "not_mine"))
        assert study.space.keys == ["chunk_size"] and study.space.size == 3
        assert study.name.endswith("/keys-chunk_size")
        outcome = study.run()
        assert outcome.winner == {"chunk_size": 16}
        assert sorted(c["chunk_size"] for c in ok_configs(study.study)) == [8, 16, 32]
        assert all(set(c) == {"chunk_size"} for c in ok_configs(study.study))
        assert record and all(c["pad"] == 0 for c in record)
        whole = runner(name, storage, FakeTimer({8: 3.0, 16: 1.0, 32: 2.0}))
        assert whole.space.size == 9 and whole.name != study.name
    finally:
        registry.unregister(name)

    chunk = registry.get("chunk")
    space = SearchSpace(chunk, Problem(1, 4096, 32, 64, 64, torch.bfloat16, device="cuda"), ("block_v", "chunk_size"))
    assert space.keys == ["block_v", "chunk_size"]
    assert space.size == len(chunk.space["block_v"]) * len(chunk.space["chunk_size"]) < chunk.space_size()
    assert space.default == {"block_v": 0, "chunk_size": 64} and space.reason(space.default) is None
    assert len(list(space.points())) == space.size
    assert "exceeds" in space.reason({"block_v": 128, "chunk_size": 64})  # V = 64: a 128-wide tile


# ---------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
def test_gpu_tune_export_dispatch_end_to_end(tmp_path, monkeypatch):
    """On a GPU: real precompile (2 processes), numerics, CUDA-event timing, selection, export and dispatch."""
    names = [v.name for v in registry.variants() if v.is_triton and v.space_size() > 1]
    if not names:
        pytest.skip("no Triton variant registered")
    name = "recurrent" if "recurrent" in names else names[0]
    problem = Problem(B=2, T=256, H=4, K=64, V=64, dtype=torch.bfloat16, device="cuda")
    store = open_storage(str(tmp_path / "gpu.db"))
    study = StudyRunner(
        name, problem, storage=store, device="cuda",
        settings=TuneSettings(trials=6, sampler="tpe", seed=0, batch_size=2, rounds=3, warmup_ms=5, rep_ms=20),
    )  # fmt: skip
    assert study.precompiler.enabled
    outcome = study.run()
    assert outcome.counts["ok"] >= 1 and outcome.selection is not None and outcome.winner_ms > 0
    (written,) = tuner_export.export(store, tmp_path / "out")
    monkeypatch.setenv(tuned.ENV_VAR, str(written.path))
    tuned.clear_cache()
    assert tuned.best_variant(problem, "delta_rule") == name
    assert tuned.lookup_config(registry.get(name), problem) == outcome.winner


def test_shipped_h200_configs_keep_auto_on_the_fastest_variant(monkeypatch):
    """The shipped H200 export (chunk and recurrent at D = 64 / 128 / 256, T = 4K and 16K) read as on that
    GPU: auto stays on chunk at every paper shape (the file times both variants there; chunk is 2-17x
    faster), each call gets the exported config of its sequence-length bucket, and the exported chunk
    configs pass the variant's constraints."""
    from deltalab.variants.dispatch import resolve

    h200 = tuned.DeviceIdentity("NVIDIA H200", "nvidia-h200", "9.0", "3.6.0")
    monkeypatch.setattr(tuned, "device_identity", lambda device="cuda": h200)
    monkeypatch.delenv(tuned.ENV_VAR, raising=False)
    tuned.clear_cache()
    try:
        data = tuned.read_file(Path(tuned.__file__).parent / "configs" / "nvidia-h200.json")
        assert data["triton"] == "3.6.0" and {e["variant"] for e in data["entries"]} == {"chunk", "recurrent"}
        exported = {(e["K"], e["T_bucket"]): e["config"] for e in data["entries"] if e["variant"] == "chunk"}
        assert {K for K, _ in exported} == {64, 128, 256}
        for D in (64, 128, 256):
            for B, T in ((8, 2048), (4, 4096), (1, 16384)):
                problem = Problem(B=B, T=T, H=2048 // D, K=D, V=D, dtype=torch.bfloat16, device="cuda")
                variant, config = resolve("delta_rule", "auto", None, problem)
                assert variant.name == "chunk", (D, T)
                assert variant.config_reason(config, problem) is None
                bucket = exported[(D, 4096 if T <= 4096 else 16384)]
                assert all(config[key] == value for key, value in bucket.items()), (D, T, config)
        assert exported[(64, 4096)]["block_v"] == 32  # a tuned config, not the default
    finally:
        tuned.clear_cache()
