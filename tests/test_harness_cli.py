"""`deltalab check` and `deltalab sweep` from the command line (typer's CliRunner, in process).

`check --quick` must exit 0 on the healthy registry (every registered variant, both families, under
Triton's interpreter on CPU) and non-zero once a broken variant is registered; `sweep` must run end to
end on a tiny CPU grid and write its results.
"""

import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from deltalab.harness.cli import app
from deltalab.harness.sweep import RESULT_COLUMNS
from deltalab.variants import registry
from deltalab.variants.common import autograd_backward

runner = CliRunner()
ON_CPU = not torch.cuda.is_available()


@pytest.fixture
def broken_variant():
    """A delta_rule variant that ignores beta (registered for the test only)."""
    healthy = registry.get("torch_chunk").forward

    def forward(q, k, v, beta, **kw):
        return healthy(q, k, v, torch.ones_like(beta), **kw)

    name = "test_cli_ignores_beta"
    registry.register(
        name, dtypes=(torch.float32, torch.float16), devices=("cpu", "cuda"), backward=autograd_backward(forward),
        space={"chunk_size": (16, 64)}, default_config={"chunk_size": 16},
    )(forward)  # fmt: skip
    yield name
    registry.unregister(name)


def test_check_quick_passes_on_the_healthy_registry(tmp_path):
    out = tmp_path / "check.json"
    result = runner.invoke(app, ["check", "--quick", "--dtype", "float32", "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    names = {(r["family"], r["variant"]) for r in rows}
    for family in ("delta_rule", "block_diag"):
        for v in registry.variants(family):
            if not v.is_reference:
                assert (family, v.name) in names  # every registered variant was checked
    assert all(r["status"] in ("passed", "skipped") for r in rows)
    assert any(r["status"] == "passed" for r in rows)
    if ON_CPU:
        assert "interpreter" in result.output


def test_check_fails_when_a_broken_variant_is_registered(broken_variant):
    args = ["check", "--quick", "--family", "delta_rule", "--dtype", "float32", "--variant", f"torch_chunk,{broken_variant}"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert broken_variant in result.output
    assert "2 passed, 2 failed, 0 skipped" in result.output  # torch_chunk passes both quick shapes
    assert "o: error" in result.output


def test_check_rejects_unknown_names():
    result = runner.invoke(app, ["check", "--variant", "no_such_variant"])
    assert result.exit_code == 2 and "unknown" in result.output
    assert runner.invoke(app, ["check", "--dtype", "int8"]).exit_code == 2
    assert runner.invoke(app, ["check", "--family", "nope"]).exit_code == 2


@pytest.mark.skipif(not ON_CPU, reason="the CPU grid; on a GPU `deltalab sweep` runs the paper's grid")
def test_cpu_sweep_end_to_end(tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", "--T", "16,32", "--D", "16", "--tokens", "32", "--hd", "16", "--out", str(out), "--baseline", "torch_chunk"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "interpreter" in result.output and "not kernel performance" in result.output
    frame = pd.read_csv(out / "results.csv")
    assert list(frame.columns[: len(RESULT_COLUMNS) - 1]) == [c for c in RESULT_COLUMNS if c != "samples_ms"]
    # every registered Triton variant, torch_chunk and the SDPA peer, at both lengths
    triton_names = [v.name for v in registry.variants("delta_rule") if v.is_triton]
    assert set(frame["variant"]) == set(triton_names) | {"torch_chunk", "sdpa"}
    assert len(frame) == 2 * (len(triton_names) + 2)
    assert (frame["status"] == "ok").all(), frame[["variant", "reason"]]
    assert (frame["mode"] == "fwd").all() and (frame["dtype"] == "float32").all()
    rows = json.loads((out / "results.json").read_text())
    assert all(len(r["samples_ms"]) == r["n_samples"] >= 2 for r in rows)
    assert (out / "environment.json").is_file() and (out / "ceilings.json").is_file()
    assert "speed-up vs torch_chunk" in result.output


def test_sweep_config_applies_to_our_variants(tmp_path):
    """--config: one config for the listed variants of ours (peers untouched), recorded per row."""
    out = tmp_path / "sweep"
    args = ["sweep", "--variants", "chunk", "--no-peers", "--T", "32", "--D", "16", "--tokens", "32", "--hd", "16",
            "--out", str(out), "--config", '{"chunk_size": 16, "output": "separate"}']
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "results.json").read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    assert [r["status"] for r in rows] == ["ok"]
    assert json.loads(rows[0]["config"])["output"] == "separate" and json.loads(rows[0]["config"])["chunk_size"] == 16
    bad = runner.invoke(app, ["sweep", "--variants", "chunk", "--config", '{"chunk_sise": 16}', "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "--config" in bad.output and "chunk_sise" in bad.output
    assert runner.invoke(app, ["sweep", "--config", "[1]", "--out", str(tmp_path)]).exit_code == 2


def test_sweep_rejects_bad_options(tmp_path):
    assert runner.invoke(app, ["sweep", "--variants", "nope", "--out", str(tmp_path)]).exit_code == 2
    assert runner.invoke(app, ["sweep", "--T", "4 kilo", "--out", str(tmp_path)]).exit_code == 2
    assert runner.invoke(app, ["sweep", "--family", "x", "--out", str(tmp_path)]).exit_code == 2


def test_profile_breaks_a_call_down_by_kernel(tmp_path):
    """`deltalab profile`: one table per (variant, mode) and a JSON of the per-name times; on CPU the names
    are torch operators (our custom op appears as one), shares add up to one."""
    out = tmp_path / "profile.json"
    result = runner.invoke(app, ["profile", "--variant", "torch_chunk", "--B", "1", "--T", "32", "--H", "2", "--K", "16",
                                 "--dtype", "fp32", "--mode", "fwd,fwd+bwd", "--calls", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "torch_chunk fwd B=1 T=32 H=2 K=16 V=16 float32" in result.output and "total" in result.output
    records = json.loads(out.read_text())
    assert [(r["variant"], r["mode"]) for r in records] == [("torch_chunk", "fwd"), ("torch_chunk", "fwd+bwd")]
    for record in records:
        kernels = record["kernels"]
        assert kernels and all(k["us_per_call"] > 0 for k in kernels)
        assert sum(k["share"] for k in kernels) == pytest.approx(1.0)
        assert [k["us_per_call"] for k in kernels] == sorted((k["us_per_call"] for k in kernels), reverse=True)
    assert any("delta_rule" in k["name"] for k in records[0]["kernels"])


def test_profile_rejects_bad_arguments():
    result = runner.invoke(app, ["profile", "--variant", "torch_chunk", "--mode", "sideways"])
    assert result.exit_code == 2 and "--mode" in result.output
    result = runner.invoke(app, ["profile", "--variant", "torch_chunk", "--T", "lots"])
    assert result.exit_code == 2 and "--T: expected a size" in result.output
    result = runner.invoke(app, ["profile", "--variant", "torch_chunk", "--config", "{chunk_size: 16"])
    assert result.exit_code == 2 and "--config:" in result.output
    result = runner.invoke(app, ["profile", "--variant", "no_such_variant", "--T", "16", "--K", "16", "--H", "1"])
    assert result.exit_code == 2 and "--variant: unknown no_such_variant" in result.output
