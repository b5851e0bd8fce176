"""Performance-regression checks (``deltalab regress``): statistics and decisions on synthetic and recorded
samples, baseline files, environment refusal, JUnit/JSON output, the CLI through its replay testing hook,
and the CUDA-event clock of the pytest-benchmark suite (with fake events). Nothing here times kernels on
CPU; the GPU test at the end records and re-checks a small baseline for real.
"""

from __future__ import annotations

import importlib.util
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from deltalab.harness import regress, stats
from deltalab.harness.cli import app

ENV = {
    "gpu": "NVIDIA H200",
    "compute_capability": "9.0",
    "torch": "2.11.0+cu130",
    "triton": "3.6.0",
    "deltalab": "0.1.0",
    "git_commit": "0123abc",
    "date": "2026-11-29T12:00:00Z",
    "interpreter": False,
}


def timing_samples(rng: np.random.Generator, shape, median_ms: float = 0.5, cv: float = 0.03) -> np.ndarray:
    """Realistic GPU timings: right-skewed (lognormal) around ``median_ms``, plus a few slow outliers
    (1 % of samples 1.5-3x slower: a context switch, a clock dip)."""
    samples = median_ms * rng.lognormal(0.0, cv, size=shape)
    outliers = rng.random(shape) < 0.01
    return np.where(outliers, samples * rng.uniform(1.5, 3.0, size=shape), samples)


# ------------------------------------------------------------------------------------------ statistics
def test_bootstrap_interval_contains_the_true_ratio_at_nominal_rate():
    """Percentile bootstrap of the median ratio: over 400 A/A trials (true ratio 1) the 90 % interval
    holds 1 in roughly 90 % of them -- neither absurdly wide nor overconfident."""
    rng = np.random.default_rng(1)
    current = timing_samples(rng, (400, 60))
    baseline = timing_samples(rng, (400, 60))
    low, high = stats.bootstrap_ratio_ci(current, baseline, confidence=0.90, resamples=1000, seed=3)
    assert low.shape == high.shape == (400,)
    assert (low <= high).all()
    coverage = float(np.mean((low <= 1.0) & (high >= 1.0)))
    assert 0.84 <= coverage <= 0.97, coverage
    # and it moves with the data: a 10 % slowdown puts the interval around 1.1
    low, high = stats.bootstrap_ratio_ci(current[:50] * 1.10, baseline[:50], resamples=1000)
    assert np.mean((low <= 1.10) & (high >= 1.10)) > 0.85
    assert (low > 1.02).all()


def test_bootstrap_is_reproducible_and_batch_consistent():
    rng = np.random.default_rng(2)
    current, baseline = timing_samples(rng, (3, 41)), timing_samples(rng, (3, 37))
    first = stats.bootstrap_ratio_ci(current[0], baseline[0], seed=7)
    assert first == stats.bootstrap_ratio_ci(current[0], baseline[0], seed=7)
    assert first != stats.bootstrap_ratio_ci(current[0], baseline[0], seed=8)
    # 1-D samples of different lengths work; the point estimate sits inside the interval
    ratio = stats.median_ratio(current[0], baseline[0])
    assert first[0] <= ratio <= first[1]


def test_robust_cv_ignores_one_outlier_plain_cv_does_not():
    rng = np.random.default_rng(3)
    samples = rng.normal(1.0, 0.02, 100)
    samples[0] = 5.0  # one sample that caught a context switch
    assert stats.coefficient_of_variation(samples) > 0.3
    assert 0.01 < stats.robust_cv(samples) < 0.04
    wide = rng.normal(1.0, 0.2, 2000)
    assert stats.robust_cv(wide) == pytest.approx(0.2, rel=0.1)  # equals the CV for normal samples


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [1.0, float("inf")], [1.0, 0.0], [1.0, -2.0]])
def test_bad_samples_are_refused(bad):
    with pytest.raises(ValueError, match="current"):
        regress.compare(bad, [1.0] * 10)


# ------------------------------------------------------------------------------------------- decisions
def test_injected_ten_percent_slowdown_is_flagged():
    rng = np.random.default_rng(4)
    baseline = timing_samples(rng, 50)
    current = timing_samples(rng, 50) * 1.10
    result = regress.compare(current, baseline)
    assert result.verdict == "regression", result.reason
    assert result.ratio == pytest.approx(1.10, abs=0.02)
    assert result.ci_low > 1.05
    assert "slower" in result.reason
    # in bulk: the slowdown is caught in (nearly) every trial
    batch = regress.compare_batch(timing_samples(rng, (200, 50)) * 1.10, timing_samples(rng, (200, 50)))
    assert np.mean(batch["verdict"] == "regression") >= 0.95


def test_speedup_is_an_improvement_and_small_changes_are_unchanged():
    rng = np.random.default_rng(5)
    baseline = timing_samples(rng, 50)
    assert regress.compare(timing_samples(rng, 50) * 0.85, baseline).verdict == "improvement"
    # a real but small (2 %) slowdown is below the 5 % minimum effect
    small = regress.compare(timing_samples(rng, 50) * 1.02, baseline)
    assert small.verdict == "unchanged"
    # with no minimum effect, a clear 2 % slowdown on quiet samples is significant
    quiet_base = timing_samples(rng, 200, cv=0.005)
    strict = regress.Settings(min_effect=0.0)
    assert regress.compare(timing_samples(rng, 200, cv=0.005) * 1.02, quiet_base, strict).verdict == "regression"


def test_aa_false_alarm_rate_at_most_one_percent():
    """500 A/A comparisons (both samples from one distribution, noise up to 8 % CV, outliers): the default
    settings raise a regression in at most 1 % of them (5 trials)."""
    rng = np.random.default_rng(6)
    trials = 500
    cvs = rng.uniform(0.005, 0.08, size=(trials, 1))
    n = 30
    current = 0.5 * rng.lognormal(0.0, 1.0, size=(trials, n)) ** cvs
    baseline = 0.5 * rng.lognormal(0.0, 1.0, size=(trials, n)) ** cvs
    batch = regress.compare_batch(current, baseline)
    false_alarms = int(np.sum(batch["verdict"] == "regression"))
    assert false_alarms <= trials // 100, false_alarms
    assert np.mean(batch["verdict"] == "unchanged") > 0.9  # and the rest are not written off as noisy
    # the same holds without the minimum effect for the one-sided tail of a 99 % interval
    strict = regress.compare_batch(current, baseline, regress.Settings(min_effect=0.0, confidence=0.98))
    assert np.sum(strict["verdict"] == "regression") <= trials // 100 + 3


def test_noisy_cases_are_noisy_not_failed():
    rng = np.random.default_rng(7)
    baseline = timing_samples(rng, 50, cv=0.02)
    noisy_current = timing_samples(rng, 50, cv=0.25) * 1.3  # even a large slowdown: too noisy to judge
    result = regress.compare(noisy_current, baseline)
    assert result.verdict == "noisy"
    assert "noisy" in result.reason and result.current_cv > 0.10
    # noise on the baseline side counts as well
    assert regress.compare(baseline * 1.3, timing_samples(rng, 50, cv=0.25)).verdict == "noisy"
    # too few samples cannot be judged either
    few = regress.compare(baseline[:3] * 1.5, baseline)
    assert few.verdict == "noisy" and "too few" in few.reason
    # a looser max_cv judges the first case after all
    assert regress.compare(noisy_current, baseline, regress.Settings(max_cv=0.5)).verdict in ("regression", "unchanged")


def test_settings_are_validated():
    for bad in (dict(min_effect=-0.1), dict(max_cv=0.0), dict(confidence=1.0), dict(resamples=10), dict(rounds=0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            regress.Settings(**bad).validate()


# --------------------------------------------------------------------------------------- cases, files
def make_case(variant="chunk", mode="fwd", D=64, samples=()):
    return regress.Case(variant, "delta_rule", mode, "bfloat16", 4, 4096, 2048 // D, D, D, D, None, list(samples))


def make_baseline(rng, cases=None, env=ENV) -> regress.Baseline:
    cases = cases or [make_case(v, m, D) for v in ("chunk", "recurrent") for D in (64, 128) for m in ("fwd", "fwd+bwd")]
    for case in cases:
        case.samples_ms = timing_samples(rng, 40).tolist()
    return regress.Baseline(environment=dict(env), cases=cases, settings={"rounds": 4, "warmup_ms": 5.0, "rep_ms": 10.0})


def test_baseline_round_trip_and_validation(tmp_path):
    rng = np.random.default_rng(8)
    baseline = make_baseline(rng)
    path = regress.save_baseline(baseline, tmp_path / "sub" / "b.json")
    loaded = regress.load_baseline(path)
    assert loaded.environment == ENV
    assert [c.key() for c in loaded.cases] == [c.key() for c in baseline.cases]
    assert loaded.cases[3].samples_ms == baseline.cases[3].samples_ms
    assert loaded.settings["rounds"] == 4

    data = json.loads(path.read_text())
    broken = [
        ({**data, "schema_version": 99}, "schema_version"),
        ({**data, "environment": {}}, "environment"),
        ({**data, "cases": []}, "cases"),
        ({**data, "cases": [{**data["cases"][0], "mode": "sideways"}]}, r"cases\[0\]\.mode"),
        ({**data, "cases": [{**data["cases"][0], "K": 0}]}, r"cases\[0\]\.K"),
        ({**data, "cases": [{**data["cases"][0], "samples_ms": []}]}, "samples_ms"),
        ({**data, "cases": [{**data["cases"][0], "samples_ms": [1.0, -1.0]}]}, "samples_ms"),
        ({**data, "cases": [data["cases"][0], data["cases"][0]]}, "duplicate"),
    ]
    for content, message in broken:
        path.write_text(json.dumps(content))
        with pytest.raises(ValueError, match=message):
            regress.load_baseline(path)
    with pytest.raises(ValueError, match="does not exist"):
        regress.load_baseline(tmp_path / "missing.json")


def test_default_cases_are_the_papers_setting():
    cases, skipped = regress.default_cases(variants=("reference", "torch_chunk", "no_such_variant"))
    assert "no_such_variant: not registered" in skipped
    assert {c.variant for c in cases} == {"reference", "torch_chunk"}
    assert {c.K for c in cases} == {64, 128, 256}
    assert {c.mode for c in cases} == {"fwd", "fwd+bwd"}
    for case in cases:
        assert case.B * case.T == 16384 and case.T == 4096
        assert case.H * case.K == 2048 and case.K == case.V == case.block_size
        assert case.dtype == "bfloat16" and case.config is None
    assert len({c.key() for c in cases}) == len(cases) == 12
    with pytest.raises(ValueError, match="tokens"):
        regress.default_cases(seq_len=3000)


def test_gpu_slug():
    assert regress.gpu_slug("NVIDIA H200") == "nvidia-h200"
    assert regress.gpu_slug("NVIDIA GeForce RTX 4090 (24GB)") == "nvidia-geforce-rtx-4090-24gb"


# ------------------------------------------------------------------------------------- environments
def test_mismatched_gpu_or_triton_is_refused_before_measuring():
    rng = np.random.default_rng(9)
    baseline = make_baseline(rng)
    calls = []

    def measure(case, round_index):
        calls.append(case)
        return timing_samples(rng, 10).tolist()

    for field, value in (("gpu", "NVIDIA A100-SXM4-80GB"), ("triton", "3.5.1"), ("interpreter", True)):
        with pytest.raises(regress.EnvironmentMismatch, match=field):
            regress.run_regress(baseline, measure, {**ENV, field: value})
    assert calls == []
    # allowed explicitly: measured, and the difference is reported
    report = regress.run_regress(baseline, measure, {**ENV, "gpu": "NVIDIA A100"}, allow_mismatch=True)
    assert any("gpu" in line for line in report.differences)
    assert len(calls) == len(baseline.cases) * 5
    # a different torch version is noted, not refused
    report = regress.run_regress(baseline, measure, {**ENV, "torch": "2.12.0"})
    assert any(line.startswith("torch") for line in report.differences)


# ----------------------------------------------------------------------------------- measuring, report
def test_interleaved_rounds_shuffle_order_and_isolate_failures():
    cases = [make_case(D=D) for D in (16, 32, 64, 128)]
    log = []

    def measure(case, round_index):
        log.append((round_index, case.K))
        if case.K == 32 and round_index == 1:
            raise RuntimeError("CUDA out of memory")
        return [1.0 + case.K / 1000, 1.1 + case.K / 1000]

    measured = regress.measure_interleaved(cases, measure, rounds=4, seed=1)
    for r in range(4):
        in_round = [k for rr, k in log if rr == r]
        assert sorted(in_round) == sorted(c.K for c in cases if not (c.K == 32 and r > 1))
    orders = [tuple(k for rr, k in log if rr == r) for r in (2, 3)]
    assert len(set(orders)) > 1 or len({tuple(k for rr, k in log if rr == r) for r in range(4)}) > 1
    samples, error = measured[1]
    assert samples == [] and "out of memory" in error
    assert measured[0][1] is None and len(measured[0][0]) == 8  # 4 rounds x 2 samples


def build_report(rng) -> regress.Report:
    """One case per verdict: regression, improvement, unchanged, noisy, error."""
    baseline = make_baseline(rng, [make_case(D=D) for D in (16, 32, 64, 128, 256)])
    factors = {16: 1.10, 32: 0.80, 64: 1.0}

    def measure(case, round_index):
        if case.K == 256:
            raise RuntimeError("kernel crashed")
        if case.K == 128:
            return timing_samples(rng, 10, cv=0.3).tolist()
        return (timing_samples(rng, 10) * factors[case.K]).tolist()

    return regress.run_regress(baseline, measure, ENV, regress.Settings(rounds=4))


def test_report_verdicts_junit_and_json(tmp_path):
    rng = np.random.default_rng(10)
    report = build_report(rng)
    assert [r.verdict for r in report.results] == ["regression", "improvement", "unchanged", "noisy", "error"]
    assert report.counts() == {"regression": 1, "improvement": 1, "unchanged": 1, "noisy": 1, "error": 1}
    assert report.exit_code == 1

    junit = regress.write_junit(report, tmp_path / "junit.xml")
    root = ET.parse(junit).getroot()
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == 5 and suite.get("tests") == "5"
    assert len(suite.findall("testcase/failure")) == 1 == int(suite.get("failures"))
    assert len(suite.findall("testcase/error")) == 1 == int(suite.get("errors"))
    assert len(suite.findall("testcase/skipped")) == 1 == int(suite.get("skipped"))
    failed = [c for c in cases if c.find("failure") is not None][0]
    assert "K=16" in failed.get("name") and "slower" in failed.find("failure").get("message")
    assert "kernel crashed" in [c for c in cases if c.find("error") is not None][0].find("error").get("message")

    document = json.loads(regress.write_json(report, tmp_path / "r.json").read_text())
    assert document["summary"]["regression"] == 1 and document["summary"]["exit_code"] == 1
    rows = document["rows"]
    assert [row["verdict"] for row in rows] == ["regression", "improvement", "unchanged", "noisy", "error"]
    ok = rows[0]
    assert ok["status"] == "ok" and ok["n_samples"] == 40 and len(ok["samples_ms"]) == 40
    assert ok["median_ms"] == pytest.approx(np.median(ok["samples_ms"]))
    assert ok["tokens_per_s"] == pytest.approx(4 * 4096 / (ok["median_ms"] * 1e-3))
    assert ok["gpu"] == "NVIDIA H200" and ok["triton"] == "3.6.0" and json.loads(ok["config"]) == {}
    assert ok["ci_low"] > 1.05 and ok["ratio"] == pytest.approx(1.1, abs=0.03)
    assert rows[4]["status"] == "failed" and "kernel crashed" in rows[4]["reason"] and rows[4]["median_ms"] is None

    folder = regress.write_results_folder(report, tmp_path / "results")
    assert json.loads((folder / "results.json").read_text())[0]["samples_ms"] == ok["samples_ms"]
    header = (folder / "results.csv").read_text().splitlines()[0].split(",")
    assert "samples_ms" not in header and {"variant", "median_ms", "verdict", "floor_ratio"} <= set(header)
    assert json.loads((folder / "environment.json").read_text())["gpu"] == "NVIDIA H200"

    markdown = regress.write_markdown(report, tmp_path / "summary.md").read_text()
    assert "**regression**" in markdown and markdown.count("\n| ") == 6  # header + 5 cases


def test_rich_table_shows_every_case():
    from rich.console import Console

    report = build_report(np.random.default_rng(11))
    console = Console(record=True, width=200)
    console.print(regress.render_table(report))
    text = console.export_text()
    for verdict in regress.VERDICTS:
        assert verdict in text
    assert "1.1" in text and "D16" in text


# ----------------------------------------------------------------------------------------------- CLI
def flat(output: str) -> str:
    """CLI output with rich's line wrapping undone."""
    return " ".join(output.split())


def write_files(tmp_path, rng, factor=1.0, env=ENV, current_env=None):
    baseline = make_baseline(rng)
    base_path = regress.save_baseline(baseline, tmp_path / "baseline.json")
    current = [
        {**case.to_dict(), "samples_ms": (timing_samples(rng, 40) * (factor if i == 0 else 1.0)).tolist()}
        for i, case in enumerate(baseline.cases)
    ]
    replay = tmp_path / "replay.json"
    replay.write_text(json.dumps({"environment": current_env or {**env, "git_commit": "feedbee"}, "cases": current}))
    return base_path, replay


def test_cli_flags_an_injected_slowdown(tmp_path):
    rng = np.random.default_rng(12)
    base_path, replay = write_files(tmp_path, rng, factor=1.10)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["regress", "--baseline", str(base_path), "--replay", str(replay), "--json", str(out / "r.json"),
         "--junit", str(out / "j.xml"), "--markdown", str(out / "s.md"), "--out", str(out / "results")],
    )
    assert result.exit_code == 1, result.output
    assert "regression" in flat(result.output) and "testing hook" in flat(result.output)
    document = json.loads((out / "r.json").read_text())
    assert document["summary"]["regression"] == 1 and document["summary"]["cases"] == 8
    assert document["environment"]["git_commit"] == "feedbee"
    assert document["baseline_environment"]["git_commit"] == "0123abc"
    assert document["settings"]["rounds"] == 4  # taken over from the baseline's recorded settings
    suite = ET.parse(out / "j.xml").getroot().find("testsuite")
    assert int(suite.get("failures")) == 1 and len(suite.findall("testcase")) == 8
    assert (out / "results" / "results.csv").exists() and (out / "s.md").exists()


def test_cli_aa_passes_and_env_var_hook_works(tmp_path, monkeypatch):
    rng = np.random.default_rng(13)
    base_path, _ = write_files(tmp_path, rng)
    # the baseline replayed against itself: every case unchanged, exit 0
    monkeypatch.setenv("DELTALAB_REGRESS_REPLAY", str(base_path))
    result = CliRunner().invoke(app, ["regress", "--baseline", str(base_path)])
    assert result.exit_code == 0, result.output
    assert "8 unchanged" in flat(result.output)


def test_cli_refuses_another_gpu_unless_allowed(tmp_path):
    rng = np.random.default_rng(14)
    base_path, replay = write_files(tmp_path, rng, current_env={**ENV, "gpu": "NVIDIA A100-SXM4-80GB"})
    args = ["regress", "--baseline", str(base_path), "--replay", str(replay)]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2
    assert "not comparable" in flat(refused.output) and "A100" in flat(refused.output)
    allowed = CliRunner().invoke(app, args + ["--allow-mismatch"])
    assert allowed.exit_code == 0, allowed.output
    assert "environment differences" in flat(allowed.output)


def test_cli_bad_baseline_and_missing_arguments(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = CliRunner().invoke(app, ["regress", "--baseline", str(bad), "--replay", str(bad)])
    assert result.exit_code == 2 and "not valid JSON" in flat(result.output)
    result = CliRunner().invoke(app, ["regress"])
    assert result.exit_code == 2 and "--baseline" in flat(result.output)


def test_cli_without_gpu_refuses_to_time(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    rng = np.random.default_rng(15)
    base_path, _ = write_files(tmp_path, rng)
    result = CliRunner().invoke(app, ["regress", "--baseline", str(base_path)])
    assert result.exit_code == 2 and "needs a CUDA GPU" in flat(result.output)


def test_cli_writes_a_baseline_that_checks_clean(tmp_path):
    """--write-baseline on the default case set (small shapes here), with replayed samples; the written
    file loads, holds the replayed samples, and a check against it passes."""
    rng = np.random.default_rng(16)
    shape_args = ["--variants", "torch_chunk,reference,no_such_variant", "--D", "16,32", "--T", "64",
                  "--tokens", "128", "--hd", "64", "--modes", "fwd", "--dtype", "float32", "--rounds", "3"]
    cases, _ = regress.default_cases(
        variants=("torch_chunk", "reference"), head_dims=(16, 32), seq_len=64, tokens=128, hidden=64,
        modes=("fwd",), dtype="float32",
    )
    assert len(cases) == 4
    replay = tmp_path / "replay.json"
    recorded = [{**c.to_dict(), "samples_ms": timing_samples(rng, 30).tolist()} for c in cases]
    replay.write_text(json.dumps({"environment": ENV, "cases": recorded}))
    written = tmp_path / "baselines" / "nvidia-h200.json"
    result = CliRunner().invoke(app, ["regress", "--write-baseline", str(written), "--replay", str(replay), *shape_args])
    assert result.exit_code == 0, result.output
    assert "no_such_variant: not registered" in flat(result.output)
    baseline = regress.load_baseline(written)
    assert baseline.environment["gpu"] == "NVIDIA H200" and baseline.settings["rounds"] == 3
    assert [c.samples_ms for c in baseline.cases] == [r["samples_ms"] for r in recorded]

    out = tmp_path / "results"
    check = CliRunner().invoke(app, ["regress", "--baseline", str(written), "--replay", str(replay), "--out", str(out)])
    assert check.exit_code == 0, check.output
    rows = json.loads((out / "results.json").read_text())
    assert all(row["verdict"] == "unchanged" for row in rows)
    # throughput from the registry's cost model is filled in for our variants
    assert all(row["tflops"] and row["tflops"] > 0 and row["gbps"] > 0 for row in rows)


# ---------------------------------------------------------------------------- CUDA-event clock (fake)
def load_clock_module():
    path = Path(__file__).parent / "perf" / "cuda_clock.py"
    spec = importlib.util.spec_from_file_location("deltalab_test_cuda_clock", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeGpu:
    """A GPU timeline in ms: events take the time at which they are recorded; work advances it."""

    def __init__(self):
        self.now_ms = 0.0
        self.synchronized = 0

    def event(self):
        gpu = self

        class Event:
            def record(self):
                self.at = gpu.now_ms

            def synchronize(self):
                gpu.synchronized += 1

            def elapsed_time(self, other):
                return other.at - self.at

        return Event()


def test_cuda_event_clock_reads_gpu_time_between_armed_pairs():
    module = load_clock_module()
    gpu = FakeGpu()
    clock = module.CudaEventClock(event_factory=gpu.event)
    readings = []
    for work_ms in (2.0, 0.5, 3.25) * 20:
        gpu.now_ms += 7.0  # the L2 flush and host-side gaps before the start event: not timed
        clock.arm()
        start = clock()
        synced_before = gpu.synchronized
        gpu.now_ms += work_ms  # the timed call
        end = clock()
        assert gpu.synchronized == synced_before + 1  # only the end reading waits for the GPU
        readings.append(end - start)
        assert end >= start
    assert readings == pytest.approx([w / 1e3 for w in (2.0, 0.5, 3.25) * 20], abs=1e-12)
    # unarmed readings are plain elapsed GPU time between consecutive readings
    a = clock()
    gpu.now_ms += 1.5
    assert clock() - a == pytest.approx(1.5e-3)
    assert module.CudaEventClock.__name__ == "CudaEventClock" and module.CLOCK.__name__ == "CudaEventClock"


FAKE_GPU = FakeGpu()
FAKE_CLOCK = load_clock_module().CudaEventClock(event_factory=FAKE_GPU.event)


@pytest.mark.benchmark(timer=FAKE_CLOCK, group="fake gpu clock")
def test_cuda_event_clock_inside_pytest_benchmark(benchmark):
    """The perf suite's wiring on CPU: pytest-benchmark's pedantic rounds, a setup that arms the clock,
    the clock as the marker's timer. Each call "runs" 1.5 ms on the fake GPU after 9 ms of untimed
    flush in setup; pytest-benchmark must record exactly 1.5 ms per round."""
    if benchmark.disabled:
        pytest.skip("pytest-benchmark is disabled in this run")

    def setup():
        FAKE_GPU.now_ms += 9.0  # the L2 flush: enqueued before the start event, not timed
        FAKE_CLOCK.arm()

    def call():
        FAKE_GPU.now_ms += 1.5

    benchmark.pedantic(call, setup=setup, rounds=25, warmup_rounds=3, iterations=1)
    assert benchmark.stats.stats.rounds == 25
    assert benchmark.stats.stats.median == pytest.approx(1.5e-3, abs=1e-12)
    assert benchmark.stats.stats.max == pytest.approx(1.5e-3, abs=1e-12)


# ------------------------------------------------------------------------------------ real measuring
def test_timing_measure_drives_the_harness_timing_path():
    """TimingMeasure through deltalab.harness.timing on CPU (perf_counter; torch_chunk, tiny shape): it
    returns positive samples every round and re-uses one runner per case. Speed is not judged here."""
    cases = [
        regress.Case("torch_chunk", "delta_rule", mode, "float32", 1, 32, 2, 16, 16, 16)
        for mode in ("fwd", "fwd+bwd")
    ]
    measure = regress.TimingMeasure(warmup_ms=0.0, rep_ms=2.0, device="cpu")
    measured = regress.measure_interleaved(cases, measure, rounds=2)
    for samples, error in measured:
        assert error is None
        assert len(samples) >= 10 and all(x > 0 for x in samples)  # at least min_reps=5 per round
    assert len(measure._runners) == 2
    measure.close()
    assert measure._runners == {}


@pytest.mark.gpu
def test_gpu_record_then_check_is_not_a_regression(tmp_path):
    """On a GPU: record a small baseline with the real timing path, re-check it at once -- the same code
    on the same machine must not be flagged as a regression (unchanged, improvement or noisy only)."""
    import torch

    from deltalab.harness.env import environment
    from deltalab.variants import registry

    names = [n for n in ("chunk", "recurrent") if n in registry.names()] or ["torch_chunk"]
    cases, _ = regress.default_cases(variants=names, head_dims=(64,), seq_len=1024, tokens=4096, hidden=512)
    settings = regress.Settings(rounds=3, warmup_ms=10.0, rep_ms=30.0)
    measure = regress.TimingMeasure(settings.warmup_ms, settings.rep_ms)
    env = environment()
    baseline, failed = regress.record_baseline(cases, measure, env, settings)
    assert failed == [] and len(baseline.cases) == len(cases)
    path = regress.save_baseline(baseline, tmp_path / "b.json")
    report = regress.run_regress(regress.load_baseline(path), measure, env, settings)
    measure.close()
    assert [r.verdict for r in report.results if r.verdict in ("regression", "error")] == []
    for result in report.results:
        assert result.comparison.current_median_ms > 0 and torch.isfinite(torch.tensor(result.samples_ms)).all()
    rows = report.rows()
    assert all(row["tflops"] > 0 and row["gpu"] == env["gpu"] for row in rows)
