"""`deltalab compare`: peer time / our time from a sweep measured side by side, against the targets."""

import json
import math

import pandas as pd
from typer.testing import CliRunner

from deltalab.harness.cli import app
from deltalab.reports.compare import ratio_rows, summarise
from deltalab.reports.load import load_results

H200 = "reports/h200-2026-11-29/sweep"


def _row(variant, mode, T, ms, K=64):
    return {"variant": variant, "mode": mode, "dtype": "bfloat16", "B": 16384 // T, "T": T, "H": 2048 // K,
            "K": K, "V": K, "median_ms": ms, "floor_ratio": 10.0}


def test_ratios_geomean_and_targets_on_synthetic_rows():
    ok = pd.DataFrame([
        _row("chunk", "fwd", 2048, 1.0), _row("fla_chunk", "fwd", 2048, 2.0),
        _row("chunk", "fwd", 4096, 1.0), _row("fla_chunk", "fwd", 4096, 0.5),  # one shape slower
        _row("recurrent", "fwd", 2048, 1.0), _row("fla_recurrent", "fwd", 2048, 3.0),
        _row("chunk", "fwd", 8192, 1.0),  # no peer row: not compared
    ])  # fmt: skip
    ratios = ratio_rows(ok)
    assert len(ratios) == 3
    assert sorted(ratios["ratio"]) == [0.5, 2.0, 3.0]
    summary = summarise(ratios).set_index(["variant", "mode"])
    assert math.isclose(summary.loc[("chunk", "fwd"), "geomean"], 1.0)
    assert summary.loc[("chunk", "fwd"), "worst"] == 0.5
    assert not summary.loc[("chunk", "fwd"), "met"]  # a shape slower than the peer, geomean 1.0 < 1.5
    assert summary.loc[("recurrent", "fwd"), "met"]


def test_host_share_shown_where_recorded():
    """Rows with the host's time per call get host_share = host / GPU median and a "host" column; older
    results without it get NaN and "-"."""
    from io import StringIO

    from rich.console import Console

    from deltalab.reports.compare import print_comparison

    ok = pd.DataFrame([
        dict(_row("chunk", "fwd+bwd", 2048, 2.0), host_ms=1.5), _row("fla_chunk", "fwd+bwd", 2048, 2.4),
        _row("chunk", "fwd", 2048, 0.5), _row("fla_chunk", "fwd", 2048, 0.6),
    ])  # fmt: skip
    ratios = ratio_rows(ok).set_index("mode")
    assert math.isclose(ratios.loc["fwd+bwd", "host_share"], 0.75)
    assert math.isnan(ratios.loc["fwd", "host_share"])
    assert not ratios["host_bound"].any()  # 75 %: below HOST_BOUND_SHARE; no record: not judged
    out = StringIO()
    print_comparison(Console(file=out, width=160), ratio_rows(ok), summarise(ratio_rows(ok)))
    assert "75 %" in out.getvalue() and "host-bound" not in out.getvalue()


def test_host_bound_rows_flagged_on_either_side():
    """A row where ours or the peer's host time nears the GPU time is flagged, and the table says so."""
    from io import StringIO

    from rich.console import Console

    from deltalab.reports.compare import print_comparison

    ok = pd.DataFrame([
        dict(_row("chunk", "fwd", 2048, 0.70), host_ms=0.66), dict(_row("fla_chunk", "fwd", 2048, 0.89), host_ms=0.2),
        dict(_row("chunk", "fwd", 4096, 0.50), host_ms=0.1), dict(_row("fla_chunk", "fwd", 4096, 0.60), host_ms=0.59),
        dict(_row("chunk", "fwd", 8192, 0.50), host_ms=0.1), dict(_row("fla_chunk", "fwd", 8192, 0.60), host_ms=0.2),
    ])  # fmt: skip
    ratios = ratio_rows(ok).set_index("T")
    assert list(ratios.sort_index()["host_bound"]) == [True, True, False]
    assert math.isclose(ratios.loc[4096, "peer_host_share"], 0.59 / 0.60)
    out = StringIO()
    print_comparison(Console(file=out, width=200), ratio_rows(ok), summarise(ratio_rows(ok)))
    assert "2 of 3 rows are host-bound" in out.getvalue()


def test_timing_methods_named_and_mixed_rows_flagged():
    """Rows timed as CUDA-graph replays on one side and eagerly on the other are flagged (not like for like);
    a table timed as graphs on both sides says so."""
    from io import StringIO

    from rich.console import Console

    from deltalab.reports.compare import print_comparison

    graphs = pd.DataFrame([
        dict(_row("chunk", "fwd", 2048, 0.4), timing_method="cuda_graph"),
        dict(_row("fla_chunk", "fwd", 2048, 0.6), timing_method="cuda_graph"),
    ])  # fmt: skip
    ratios = ratio_rows(graphs)
    assert list(ratios["timing"]) == ["cuda_graph"] and not ratios["mixed_timing"].any()
    out = StringIO()
    print_comparison(Console(file=out, width=200), ratios, summarise(ratios))
    assert "timed as CUDA-graph replays on both sides" in out.getvalue() and "not like for like" not in out.getvalue()

    mixed = pd.DataFrame([
        dict(_row("chunk", "fwd", 2048, 0.4), timing_method="cuda_graph"),
        dict(_row("fla_chunk", "fwd", 2048, 0.6), timing_method="cuda_events"),
        dict(_row("chunk", "fwd", 4096, 0.4), timing_method="cuda_events"),
        dict(_row("fla_chunk", "fwd", 4096, 0.6), timing_method="cuda_events"),
        _row("chunk", "fwd", 8192, 0.4), _row("fla_chunk", "fwd", 8192, 0.6),  # not recorded: not judged
    ])  # fmt: skip
    ratios = ratio_rows(mixed).set_index("T")
    assert list(ratios.sort_index()["mixed_timing"]) == [True, False, False]
    assert ratios.loc[8192, "timing"] == ""
    out = StringIO()
    print_comparison(Console(file=out, width=200), ratio_rows(mixed), summarise(ratio_rows(mixed)))
    assert "1 of 3 rows were timed differently" in out.getvalue()
    assert "CUDA-graph replays on both sides" not in out.getvalue()


def test_committed_h200_results():
    """The committed H200 sweep: recurrent beats the peer's fused_recurrent >= 2x, chunk misses its target."""
    summary = summarise(ratio_rows(load_results([H200]).ok)).set_index(["variant", "mode"])
    assert summary.loc[("recurrent", "fwd"), "geomean"] > 2.0
    assert summary.loc[("recurrent", "fwd"), "met"]
    assert summary.loc[("chunk", "fwd"), "geomean"] < 1.0
    assert not summary.loc[("chunk", "fwd"), "met"]
    assert summary.loc[("chunk", "fwd"), "shapes"] == 4


def test_cli_prints_and_strict_fails_on_missed_target(tmp_path):
    out = tmp_path / "compare.json"
    result = CliRunner().invoke(app, ["compare", H200, "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "geometric mean over shapes" in result.output
    data = json.loads(out.read_text())
    assert {r["variant"] for r in data["ratios"]} == {"chunk", "recurrent"}
    strict = CliRunner().invoke(app, ["compare", H200, "--strict"])
    assert strict.exit_code == 1
    missing = CliRunner().invoke(app, ["compare", str(tmp_path / "nothing-here")])
    assert missing.exit_code == 2
