"""Sweeps (harness.sweep): grids, the output schema (CSV + JSON), skipped and failed items, derived figures.

The timer is injected where the numbers must be exact; one small sweep times torch_chunk for real.
"""

import json

import pandas as pd
import pytest
import torch

from deltalab.harness import sweep
from deltalab.harness.timing import Timing
from deltalab.variants import Problem, registry

CEILINGS = {"copy_gbps": 100.0, "matmul_bf16_tflops": 1.0, "matmul_fp32_tflops": 0.5}
SAMPLES = {"torch_chunk": [2.0, 2.2, 1.9, 2.1], "reference": [8.0, 8.4, 7.9], "sdpa": [1.0, 1.0, 1.0]}


def fake_timer(name, problem, config, mode, family):
    if name == "reference" and problem.T == 32:
        raise RuntimeError("out of memory (injected)")
    return Timing(list(SAMPLES[name]), method="fake")


@pytest.fixture
def cuda_only_variant():
    name = "test_sweep_cuda_only"
    registry.register(name, devices=("cuda",))(registry.get("torch_chunk").forward)
    yield name
    registry.unregister(name)


def test_grids():
    paper = sweep.paper_grid()
    assert len(paper) == 6 * 3 + 1
    for s in paper[:-1]:
        assert s.B * s.T == 16384 and s.H * s.K == 2048 and s.K == s.V
    assert {s.T for s in paper} == {512, 1024, 2048, 4096, 8192, 16384, 65536}
    assert paper[-1] == sweep.Shape(B=1, T=65536, H=16, K=128, V=128)
    cpu = sweep.cpu_grid()
    assert len(cpu) == 6 and all(s.B * s.T == 64 for s in cpu)
    assert sweep.grid([4096], [512], tokens=16384, hd=2048, block_size=128)[0] == sweep.Shape(4, 4096, 4, 512, 512, 128)
    with pytest.raises(ValueError, match="block_size"):
        sweep.grid([64], [48], tokens=64, hd=48, block_size=32)


def test_parsers():
    assert [sweep.parse_size(t) for t in ("512", "4K", "64k", "1M")] == [512, 4096, 65536, 1 << 20]
    assert sweep.parse_dtype("bf16") is torch.bfloat16 and sweep.parse_dtype("float32") is torch.float32
    with pytest.raises(ValueError):
        sweep.parse_size("4 kilo")
    with pytest.raises(ValueError, match="dtype"):
        sweep.parse_dtype("int8")


def test_output_schema_statuses_and_derived_figures(tmp_path, cuda_only_variant):
    shapes = [sweep.Shape(B=2, T=16, H=2, K=16, V=16), sweep.Shape(B=1, T=32, H=2, K=16, V=16)]
    result = sweep.run_sweep(
        tmp_path / "out",
        shapes=shapes,
        variants=["torch_chunk", "reference", cuda_only_variant],
        peers=["sdpa"],
        modes=["fwd", "fwd+bwd"],
        dtypes=[torch.float32],
        timer=fake_timer,
        ceilings=CEILINGS,
        progress=False,
    )
    assert len(result.rows) == 2 * 4 * 2
    counts = result.counts()
    assert counts == {"ok": 10, "failed": 2, "skipped": 4}

    csv = pd.read_csv(tmp_path / "out" / "results.csv")
    expected = [c for c in sweep.RESULT_COLUMNS if c != "samples_ms"] + list(sweep.EXTRA_COLUMNS)
    assert list(csv.columns) == expected
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert isinstance(rows, list) and len(rows) == 16
    assert set(sweep.RESULT_COLUMNS) <= set(rows[0])
    env = json.loads((tmp_path / "out" / "environment.json").read_text())
    assert env["gpu"] == "cpu" and "triton" in env
    assert json.loads((tmp_path / "out" / "ceilings.json").read_text()) == CEILINGS

    by = {(r["variant"], r["T"], r["mode"]): r for r in rows}
    ok = by[("torch_chunk", 16, "fwd")]
    assert ok["status"] == "ok" and ok["reason"] == ""
    assert ok["samples_ms"] == SAMPLES["torch_chunk"] and ok["n_samples"] == 4
    assert ok["median_ms"] == pytest.approx(2.05) and ok["min_ms"] == 1.9
    assert ok["tokens_per_s"] == pytest.approx(32 / 2.05e-3)
    assert json.loads(ok["config"]) == {"chunk_size": 64}
    cost = registry.get("torch_chunk").cost(Problem(B=2, T=16, H=2, K=16, V=16, dtype=torch.float32), {"chunk_size": 64})
    assert ok["tflops"] == pytest.approx(cost.flops / 2.05e-3 / 1e12)
    floor = max(cost.flops / 0.5e12, cost.bytes / 100e9) * 1e3
    assert ok["floor_ms"] == pytest.approx(floor) and ok["floor_ratio"] == pytest.approx(2.05 / floor)
    assert ok["gpu"] == "cpu" and ok["torch"] == torch.__version__ and ok["date"] == env["date"]
    assert by[("torch_chunk", 16, "fwd+bwd")]["floor_ms"] > ok["floor_ms"]

    failed = by[("reference", 32, "fwd+bwd")]
    assert failed["status"] == "failed" and "out of memory (injected)" in failed["reason"]
    assert failed["median_ms"] is None and failed["samples_ms"] is None
    skipped = by[(cuda_only_variant, 16, "fwd")]
    assert skipped["status"] == "skipped" and "device 'cpu' not supported" in skipped["reason"]
    assert by[("sdpa", 16, "fwd")]["peer"] is True and by[("sdpa", 16, "fwd")]["status"] == "ok"

    # speed-ups against a baseline, and the summary tables render
    ups = sweep.speedups(result.frame, "reference")
    row = ups[(ups["variant"] == "torch_chunk") & (ups["T"] == 16) & (ups["mode"] == "fwd")].iloc[0]
    assert row["speedup"] == pytest.approx(8.0 / 2.05)
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(sweep.summary_table(result.frame, "reference"))
    console.print(sweep.status_table(result.frame))
    text = console.export_text()
    assert "3.90x" in text and "failed" in text and "out of memory (injected)" in text


def test_block_diag_sweep_skips_peers_and_records_block_size(tmp_path):
    if "torch_chunk" not in registry.names("block_diag"):
        pytest.skip("no block_diag torch_chunk registered")
    shapes = sweep.grid([16], [32], tokens=16, hd=32, block_size=16)
    result = sweep.run_sweep(
        tmp_path, shapes=shapes, variants=["torch_chunk"], peers=["sdpa"], family="block_diag",
        dtypes=[torch.float32], timer=fake_timer, ceilings=CEILINGS, progress=False,
    )  # fmt: skip
    ours, peer = result.rows
    assert ours["status"] == "ok" and ours["block_size"] == 16 and ours["K"] == 32 and ours["family"] == "block_diag"
    assert peer["status"] == "skipped" and "delta_rule" in peer["reason"]


def test_a_killed_sweep_leaves_the_rows_it_finished(tmp_path):
    """The files are rewritten after every item: a sweep that dies outright (SystemExit stands in for a
    SIGKILL, which no handler sees) still leaves what it measured before."""
    calls = []

    def dying_timer(name, problem, config, mode, family):
        calls.append(name)
        if len(calls) == 2:
            raise SystemExit("killed")
        return Timing([1.0, 1.1], method="fake")

    shapes = sweep.grid([16], [16], tokens=16, hd=32)
    with pytest.raises(SystemExit):
        sweep.run_sweep(tmp_path, shapes=shapes, variants=["torch_chunk", "reference"], dtypes=[torch.float32],
                        timer=dying_timer, ceilings=CEILINGS, progress=False)
    (row,) = json.loads((tmp_path / "results.json").read_text())
    assert row["variant"] == "torch_chunk" and row["status"] == "ok" and row["samples_ms"] == [1.0, 1.1]
    assert len(pd.read_csv(tmp_path / "results.csv")) == 1


def test_a_real_small_sweep(tmp_path):
    result = sweep.run_sweep(
        tmp_path,
        shapes=[sweep.Shape(B=1, T=20, H=1, K=16, V=16)],
        variants=["torch_chunk"],
        modes=["fwd", "bwd", "fwd+bwd"],
        dtypes=[torch.float32, torch.float16],
        warmup_ms=0,
        rep_ms=0,
        min_reps=2,
        ceilings=CEILINGS,
        progress=False,
    )
    assert [r["status"] for r in result.rows] == ["ok"] * 6, [r["reason"] for r in result.rows]
    for r in result.rows:
        assert r["n_samples"] == 2 and all(s > 0 for s in r["samples_ms"]) and r["timing_method"] == "perf_counter"


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="modes"):
        sweep.run_sweep(tmp_path, shapes=[], variants=[], modes=["forward"], progress=False, ceilings={})
    with pytest.raises(ValueError, match="peers"):
        sweep.run_sweep(tmp_path, shapes=[], variants=[], peers=["flash"], progress=False, ceilings={})


@pytest.mark.gpu
def test_gpu_sweep_times_are_never_below_the_roofline_floor(tmp_path):
    """On a GPU: real CUDA-event timings of the Triton variants and torch_chunk on two paper shapes, both
    modes; a time below the roofline floor would mean the timing misses work (e.g. no synchronisation)."""
    names = [v.name for v in registry.variants("delta_rule") if v.is_triton] + ["torch_chunk"]
    result = sweep.run_sweep(
        tmp_path,
        shapes=sweep.grid([1024, 4096], [128], tokens=16384, hd=2048),
        variants=names,
        peers=["sdpa"],
        modes=["fwd", "fwd+bwd"],
        dtypes=[torch.bfloat16],
        warmup_ms=5,
        rep_ms=30,
        progress=False,
    )
    ok = [r for r in result.rows if r["status"] == "ok"]
    assert len(ok) == len(result.rows), [(r["variant"], r["reason"]) for r in result.rows if r["status"] != "ok"]
    for r in ok:
        assert r["timing_method"] == "cuda_events" and r["n_samples"] >= 5 and r["gpu"] != "cpu"
        assert r["floor_ratio"] > 0.9, (r["variant"], r["mode"], r["T"], r["median_ms"], r["floor_ms"])
    assert result.ceilings["copy_gbps"] > 200
