"""Reports: loading sweep results, the figures, the terminal tables, the HTML page -- and the page opened
in real headless Chromium (no console errors, every figure rendered, titles present, a screenshot that
is not blank).

The committed samples (reports/samples/) are synthetic results made by deltalab.reports.synthetic;
the first test makes sure they are what that script writes.
"""

from __future__ import annotations

import html as html_lib
import json
import math
import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from deltalab.reports import figures, synthetic
from deltalab.reports.build import make_report
from deltalab.reports.html import build_report, write_report
from deltalab.reports.load import load_results, load_studies, load_tuned_export, normalise_rows
from deltalab.reports.tables import print_tables, speedup_text

SAMPLES = Path(synthetic.__file__).parent / "samples"
CHROMIUM = "/usr/bin/chromium"
IN_CI = os.environ.get("CI", "").lower() == "true"


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def samples():
    return load_results([SAMPLES])


def _row(variant, mode, T, D, ms, status="ok", reason="", B=None, H=None, **extra):
    B = B if B is not None else max(1, 4096 // T)
    H = H if H is not None else max(1, 256 // D)
    return {"variant": variant, "family": "delta_rule", "mode": mode, "dtype": "bfloat16", "B": B, "T": T,
            "H": H, "K": D, "V": D, "block_size": D, "config": "{}", "status": status, "reason": reason,
            "median_ms": ms, "gpu": "Test GPU", "torch": "9.9", "triton": "8.8", "date": "2031-01-02T00:00:00"} | extra  # fmt: skip


def _write_results(folder: Path, rows: list[dict], env: dict | None = None, ceilings: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(rows))
    (folder / "environment.json").write_text(json.dumps(env or {"gpu": "Test GPU", "torch": "9.9", "triton": "8.8", "date": "2031-01-02"}))
    if ceilings is not None:
        (folder / "ceilings.json").write_text(json.dumps(ceilings))
    return folder


@pytest.fixture(scope="module")
def tuning_inputs(tmp_path_factory):
    """A small Optuna study in an SQLite file, shaped like the tuner's (metadata under user attr
    "deltalab", invalid configs PRUNED), and a tuner export JSON in its format."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from optuna.storages.journal import JournalFileBackend

    folder = tmp_path_factory.mktemp("tuning")
    # a journal file (the tuner's several-workers storage): much quicker to create than SQLite
    storage = f"journal:{folder / 'tune.log'}"
    backend = optuna.storages.JournalStorage(JournalFileBackend(str(folder / "tune.log")))
    study = optuna.create_study(study_name="deltalab/test/chunk", storage=backend, direction="minimize")
    study.set_user_attr("deltalab", {"variant": "chunk", "device_name": "Tuning GPU 7", "torch": "2.99", "triton": "3.77"})
    for chunk_size, warps in [(16, 2), (32, 4), (64, 4), (64, 8), (128, 8), (32, 2), (16, 8)]:
        trial = study.ask({"chunk_size": optuna.distributions.CategoricalDistribution([16, 32, 64, 128]),
                           "warps": optuna.distributions.CategoricalDistribution([2, 4, 8])})  # fmt: skip
        study.tell(trial, 1.0 + abs(math.log2(trial.params["chunk_size"] / 64)) + 0.05 * trial.params["warps"])
    for _ in range(2):  # invalid configs
        trial = study.ask({"chunk_size": optuna.distributions.CategoricalDistribution([16, 32, 64, 128])})
        study.tell(trial, state=TrialState.PRUNED)
    export = {
        "schema_version": 1, "generator": "deltalab export",
        "device": {"name": "Tuning GPU 7", "slug": "tuning-gpu-7", "compute_capability": "9.0"},
        "triton": "3.77", "torch": "2.99", "deltalab": "0.1.0", "created": "2031-02-03T00:00:00+00:00",
        "entries": [
            {"family": "delta_rule", "variant": "chunk", "dtype": "bfloat16", "K": 128, "V": 128, "block_size": 128,
             "T_bucket": 4096, "mode": "fwd+bwd", "B": 4, "T": 4096, "H": 16, "config": {"chunk_size": 64},
             "median_ms": 1.5, "default_median_ms": 1.95, "speedup_vs_default": 1.3},
            {"family": "delta_rule", "variant": "recurrent", "dtype": "bfloat16", "K": 64, "V": 64, "block_size": 64,
             "T_bucket": 16384, "mode": "fwd", "B": 1, "T": 16384, "H": 32, "config": {"block_v": 32},
             "median_ms": 9.0, "default_median_ms": 9.0, "speedup_vs_default": 1.0},
        ],
    }  # fmt: skip
    export_path = folder / "export.json"
    export_path.write_text(json.dumps(export))
    return storage, "deltalab/test/chunk", export_path


# ------------------------------------------------------------------------------------------- samples
def test_committed_samples_are_what_the_generator_writes(tmp_path):
    synthetic.write_samples(tmp_path)
    for name in ("environment.json", "ceilings.json"):
        assert json.loads((tmp_path / name).read_text()) == json.loads((SAMPLES / name).read_text()), name
    fresh = json.loads((tmp_path / "results.json").read_text())
    committed = json.loads((SAMPLES / "results.json").read_text())
    assert len(fresh) == len(committed) > 100
    for new, old in zip(fresh, committed):
        assert new.keys() == old.keys()
        for key, value in new.items():
            if isinstance(value, float):
                assert math.isclose(value, old[key], rel_tol=1e-6), (key, new, old)
            elif isinstance(value, list):
                assert len(value) == len(old[key]) and all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(value, old[key]))
            else:
                assert value == old[key], key
    assert "SYNTHETIC" in json.loads((SAMPLES / "environment.json").read_text())["gpu"]


def test_samples_follow_the_schema(samples):
    rows = samples.rows
    from deltalab.reports.load import RESULT_COLUMNS

    assert set(RESULT_COLUMNS) <= set(rows.columns)
    assert samples.synthetic
    ok = samples.ok
    assert len(ok) > 100 and len(samples.not_ok) >= 2
    assert set(ok["variant"]) >= {"chunk", "recurrent", "fla_chunk", "fla_recurrent", "sdpa"}
    assert set(ok["mode"]) == {"fwd", "fwd+bwd"}
    assert (ok["median_ms"] > 0).all() and ok["tokens_per_s"].notna().all()
    # stats agree with the samples they summarise, and nothing beats the roofline floor
    for _, row in ok.sample(20, random_state=0).iterrows():
        assert math.isclose(row["median_ms"], pd.Series(row["samples_ms"]).median(), rel_tol=1e-5)
    assert (ok["floor_ratio"] >= 1.0).all()
    assert set(samples.not_ok["status"]) == {"skipped", "failed"} and (samples.not_ok["reason"] != "").all()


# ---------------------------------------------------------------------------------------------- load
def test_load_accepts_folders_json_and_csv_alike(samples):
    from_csv = load_results([SAMPLES / "results.csv"])
    from_json_file = load_results([SAMPLES / "results.json"])
    assert len(from_csv.rows) == len(from_json_file.rows) == len(samples.rows)
    key = ["variant", "mode", "T", "K"]
    a = from_csv.ok.sort_values(key)["median_ms"].to_numpy()
    b = samples.ok.sort_values(key)["median_ms"].to_numpy()
    assert (abs(a - b) < 1e-9).all()
    assert from_csv.environments[0]["gpu"] == samples.environments[0]["gpu"]
    assert from_csv.ceilings[0]["copy_gbps"] == 4270.0


@pytest.mark.parametrize("layout", ["records", "rows_key", "split", "columns"])
def test_load_reads_pandas_json_layouts(tmp_path, layout):
    rows = [_row("chunk", "fwd", 1024, 64, 0.5), _row("recurrent", "fwd", 1024, 64, 2.0)]
    frame = pd.DataFrame(rows)
    data = {"records": rows, "rows_key": {"rows": rows, "environment": {"gpu": "Embedded GPU"}},
            "split": json.loads(frame.to_json(orient="split")), "columns": json.loads(frame.to_json(orient="columns"))}[layout]  # fmt: skip
    (tmp_path / "results.json").write_text(json.dumps(data))
    loaded = load_results([tmp_path])
    assert sorted(loaded.ok["median_ms"]) == [0.5, 2.0]
    assert loaded.ok["tokens_per_s"].tolist() == pytest.approx([1024 * 4 / 0.5e-3, 1024 * 4 / 2e-3])


def test_load_rejects_bad_input_with_the_argument_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="RESULTS"):
        load_results([tmp_path / "missing"])
    with pytest.raises(FileNotFoundError, match="neither results.json nor results.csv"):
        load_results([tmp_path])
    (tmp_path / "results.json").write_text(json.dumps([{"variant": "chunk", "T": 5}]))
    with pytest.raises(ValueError, match="lacks the column"):
        load_results([tmp_path])
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_results([tmp_path])


def test_untimed_ok_rows_become_failed_and_derived_columns_fill():
    frame = pd.DataFrame([_row("chunk", "fwd", 2048, 64, None), _row("chunk", "fwd", 4096, 64, 2.0, floor_ms=0.5)])
    rows = normalise_rows(frame)
    assert rows["status"].tolist() == ["failed", "ok"]
    assert rows.loc[0, "reason"] == "no timing recorded"
    assert rows.loc[1, "floor_ratio"] == 4.0
    assert rows.loc[1, "head_dim"] == "64"


def test_later_results_replace_duplicates_and_several_gpus_get_labels(tmp_path):
    first = _write_results(tmp_path / "a", [_row("chunk", "fwd", 1024, 64, 1.0)])
    second = _write_results(tmp_path / "b", [_row("chunk", "fwd", 1024, 64, 0.8)])
    both = load_results([first, second])
    assert both.ok["median_ms"].tolist() == [0.8] and both.notes
    other = _write_results(tmp_path / "c", [_row("chunk", "fwd", 1024, 64, 0.7, gpu="Other GPU")], env={"gpu": "Other GPU"})
    mixed = load_results([first, other])
    assert sorted(mixed.ok["label"]) == ["chunk (Other GPU)", "chunk (Test GPU)"]


# ------------------------------------------------------------------------------------------- figures
def _speedup_rows():
    rows = []
    for D in (64, 128):
        for T, gain in ((512, 2.0), (2048, 4.0), (8192, 16.0)):
            rows.append(_row("chunk", "fwd", T, D, 1.0))
            rows.append(_row("recurrent", "fwd", T, D, gain * (D / 64)))
            rows.append(_row("fla_chunk", "fwd", T, D, 2.0))
            rows.append(_row("fla_recurrent", "fwd", T, D, 3.0 * gain))
    return normalise_rows(pd.DataFrame(rows)).assign(label=lambda df: df["variant"])


def test_speedup_is_baseline_over_numerator_per_head_dim():
    ok = _speedup_rows()
    table = figures.speedups(ok, "chunk", "recurrent")
    got = {(int(r.K), int(r.T)): r.speedup for r in table.itertuples()}
    assert got == {(64, 512): 2.0, (64, 2048): 4.0, (64, 8192): 16.0, (128, 512): 4.0, (128, 2048): 8.0, (128, 8192): 32.0}
    fig = figures.speedup_figure(ok, "CAPTION", "chunk", "recurrent")
    solid = [t for t in fig.data if t.line.dash == "solid"]
    dashed = [t for t in fig.data if t.line.dash == "dash"]
    assert sorted(t.name for t in solid) == ["D=128", "D=64"]  # one line per head dim
    assert len(dashed) == 2 and all("fla_chunk/fla_recurrent" in t.name for t in dashed)
    d128 = next(t for t in solid if t.name == "D=128")
    assert list(d128.x) == [512, 2048, 8192] and list(d128.y) == [4.0, 8.0, 32.0]
    assert fig.layout.xaxis.type == "log" and "CAPTION" in fig.layout.title.text


def test_speedup_falls_back_to_the_peers_when_ours_are_missing():
    ok = _speedup_rows()
    peers_only = ok[~ok["variant"].isin(["chunk", "recurrent"])]
    assert figures.speedup_pairs(peers_only) == [("fla_chunk", "fla_recurrent")]
    no_chunk = ok[ok["variant"] != "chunk"]
    assert figures.speedup_pairs(no_chunk)[0] == ("fla_chunk", "recurrent")
    fig = figures.speedup_figure(peers_only, "c")
    assert list(fig.data[0].y) == [3.0, 6.0, 24.0]  # fla_recurrent 3*gain over fla_chunk 2
    assert figures.speedup_figure(ok[ok["variant"] == "chunk"], "c") is None
    assert figures.resolve_baseline(no_chunk[no_chunk["variant"] != "recurrent"], "recurrent") == "fla_recurrent"
    assert figures.resolve_baseline(ok, "recurrent") == "recurrent"


def test_figures_plot_only_ok_rows(tmp_path):
    rows = [_row("chunk", "fwd", T, 64, 0.5) for T in (1024, 2048)]
    rows.append(_row("chunk", "fwd", 4096, 64, 123.0, status="failed", reason="wrong numbers"))
    results = load_results([_write_results(tmp_path, rows)])
    fig = figures.throughput_figure(results.ok, "c", "fwd")
    xs = [x for trace in fig.data for x in trace.x]
    assert sorted(xs) == [1024, 2048]
    report = build_report(results)
    assert "wrong numbers" in report.html and "123" not in _table_section(report.html, "all-rows")


def _table_section(page: str, section_id: str) -> str:
    start = page.index(f"<section id='{section_id}'>")
    return page[start : page.index("</section>", start)]


def test_every_figure_states_gpu_versions_and_date(samples, tuning_inputs):
    storage, name, export_path = tuning_inputs
    report = build_report(samples, studies=load_studies(storage, [name]), exports=[load_tuned_export(export_path)])
    assert report.figure_count == 8
    env = samples.environments[0]
    for section in report.sections:
        assert section.figure is not None, section.heading
        title = section.figure.layout.title.text
        if section.id.startswith(("study", "tuned")):
            expected = ["Tuning GPU 7", "torch 2.99", "triton 3.77"]
            expected.append("2031-02-03" if section.id.startswith("tuned") else "20")  # study: first trial's date
        else:
            expected = [env["gpu"], f"torch {env['torch']}", f"triton {env['triton']}", env["date"][:10]]
        for text in expected:
            assert text in title, (section.id, text, title)


# --------------------------------------------------------------------------------------------- html
def test_html_is_self_contained_with_plotly_inlined_once(samples):
    report = build_report(samples, title="Sample <report>")
    page = report.html
    assert report.figure_count == 5
    assert page.count("plotly.js v") >= 1 and page.count("Plotly.newPlot") == 5
    # the library appears once: its banner comment is in the first figure only
    assert len(re.findall(r"\* plotly\.js v\d", page)) == 1
    assert not re.search(r"<script[^>]+src=", page) and not re.search(r"<link[^>]+href=['\"]?https?:", page)
    assert "Sample &lt;report&gt;" in page and "SYNTHETIC" in page
    not_ok = _table_section(page, "not-ok")
    for reason in samples.not_ok["reason"]:
        assert html_lib.escape(reason) in not_ok


def test_report_sections_say_why_a_figure_is_missing(tmp_path):
    rows = [_row("sdpa", "fwd", T, 64, 0.5) for T in (1024, 2048)]
    results = load_results([_write_results(tmp_path, rows)])
    report = build_report(results)
    shown = [s.id for s in report.sections if s.figure is not None]
    assert shown == ["throughput-delta_rule-fwd"]
    assert "Not shown: needs successful rows of both 'chunk' and 'recurrent'" in report.html
    assert "Not shown: no successful fwd+bwd rows" in report.html
    assert "Not shown: needs ceilings.json" in report.html


def test_cpu_interpreter_runs_are_labelled(tmp_path):
    rows = [_row(v, "fwd", T, 16, ms) for v, ms in (("chunk", 2.0), ("recurrent", 5.0)) for T in (32, 64)]
    env = {"gpu": "cpu", "torch": "2.13", "triton": "3.6.0", "date": "2031-01-02", "interpreter": True}
    results = load_results([_write_results(tmp_path, rows, env=env)])
    assert results.interpreted and not results.synthetic
    report = build_report(results)
    assert "CPU run: the Triton kernels ran under Triton's CPU interpreter" in report.html
    assert all("Triton CPU interpreter" in s.figure.layout.title.text for s in report.sections if s.figure is not None)
    console = Console(record=True, width=200)
    print_tables(results, console)
    assert "CPU run under Triton's interpreter" in console.export_text()


def test_study_and_export_figures(tuning_inputs):
    storage, name, export_path = tuning_inputs
    (study,) = load_studies(storage, [name])
    history = figures.study_history_figure(study)
    assert len(history.data[0].y) == 7  # completed trials only, not the pruned ones
    importance = figures.study_importance_figure(study)
    assert set(importance.data[0].y) == {"chunk_size", "warps"}
    export = load_tuned_export(export_path)
    assert [r["speedup"] for r in export["rows"]] == [1.3, 1.0]
    bars = figures.tuned_speedup_figure(export)
    assert list(bars.data[0].y) == [1.3, 1.0] and "chunk fwd+bwd bfloat16 K128/V128 T~4K" in bars.data[0].x
    with pytest.raises(ValueError, match="no study named"):
        load_studies(storage, ["nope"])


def test_storage_urls_resolve_like_the_tuners(tmp_path):
    from deltalab.reports.load import optuna_storage

    db = tmp_path / "tune.db"
    with pytest.raises(FileNotFoundError, match="--storage"):
        optuna_storage(str(db))  # a report never creates an empty database
    db.touch()
    assert optuna_storage(str(db)) == f"sqlite:///{db.resolve()}"
    assert optuna_storage("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"
    with pytest.raises(FileNotFoundError, match="journal"):
        optuna_storage(f"journal:{tmp_path / 'missing.log'}")


def test_nested_bucket_exports_flatten(tmp_path):
    path = tmp_path / "e.json"
    path.write_text(json.dumps({"entries": [{"variant": "chunk", "dtype": "float16", "K": 64, "V": 64,
                                             "buckets": {"1024": {"config": {"chunk_size": 32}, "median_ms": 1.0, "speedup": 1.1},
                                                         "4096": {"chunk_size": 64}}}]}))  # fmt: skip
    rows = load_tuned_export(path)["rows"]
    assert [(r["T_bucket"], r["config"], r["speedup"]) for r in rows] == [
        ("1024", '{"chunk_size": 32}', 1.1), ("4096", '{"chunk_size": 64}', None)
    ]


# ------------------------------------------------------------------------------------------- tables
def test_speedup_text_colours():
    assert speedup_text(1.5).style == "green" and str(speedup_text(1.5)) == "1.50x"
    assert speedup_text(0.5).style == "red"
    assert str(speedup_text(float("nan"))) == "-"


def test_terminal_tables_show_the_numbers_coloured(samples):
    console = Console(record=True, width=250, force_terminal=True, color_system="standard")
    print_tables(samples, console)
    plain = console.export_text(styles=False, clear=False)
    styled = console.export_text(styles=True)
    ok = samples.ok

    def median(variant, mode, T, D):
        return ok[(ok["variant"] == variant) & (ok["mode"] == mode) & (ok["T"] == T) & (ok["K"] == D)]["median_ms"].iloc[0]

    faster = median("recurrent", "fwd", 16384, 128) / median("chunk", "fwd", 16384, 128)
    slower = median("recurrent", "fwd+bwd", 512, 64) / median("chunk", "fwd+bwd", 512, 64)
    assert faster > 1 > slower
    assert re.search(r"\x1b\[32m" + re.escape(f"{faster:.2f}x"), styled)  # green: faster than the baseline
    assert re.search(r"\x1b\[31m" + re.escape(f"{slower:.2f}x"), styled)  # red: slower
    assert f"{median('sdpa', 'fwd', 2048, 256):.3f}" in plain
    assert "speed-up of chunk over recurrent" in plain and "skipped / failed cases (4)" in plain
    assert "K=512 outside the supported range" in plain and "SYNTHETIC" in plain


# ---------------------------------------------------------------------------------------------- cli
def test_cli_report_writes_the_page_and_prints_tables(tmp_path):
    from typer.testing import CliRunner

    from deltalab.harness.cli import app

    out = tmp_path / "sub" / "report.html"
    result = CliRunner().invoke(app, ["report", str(SAMPLES), "-o", str(out), "--title", "CLI report"])
    assert result.exit_code == 0, result.output
    assert out.is_file() and "<title>CLI report</title>" in out.read_text()
    said = " ".join(result.output.split())  # the console wraps at 80 columns under CliRunner
    assert "5 figures" in said and "speed-up of chunk over recurrent" in said and "not shown" not in said
    bad = CliRunner().invoke(app, ["report", str(tmp_path / "missing"), "-o", str(out)])
    assert bad.exit_code == 2 and "no such file or folder" in " ".join(bad.output.split())
    nothing = CliRunner().invoke(app, ["report", "-o", str(out)])
    assert nothing.exit_code == 2 and "nothing to report" in " ".join(nothing.output.split())


def test_cli_report_with_study_and_tuned_export(tmp_path, tuning_inputs):
    from typer.testing import CliRunner

    from deltalab.harness.cli import app

    storage, name, export_path = tuning_inputs
    out = tmp_path / "r.html"
    args = ["report", str(SAMPLES), "-o", str(out), "--storage", storage, "--study", name, "--tuned", str(export_path), "--no-tables"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "8 figures" in said and "speed-up of chunk" not in said  # --no-tables


# ----------------------------------------------------------------------------------------- chromium
def _chromium_or_skip() -> str:
    if Path(CHROMIUM).exists() and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    if IN_CI:
        pytest.fail(f"{CHROMIUM} is missing in CI: .ci/chromium.sh should have installed it")
    pytest.skip(f"{CHROMIUM} not installed (bash .ci/chromium.sh installs it)")


def run_chromium(page: Path, workdir: Path, *, window=(1280, 1600), budget_ms=3000) -> tuple[str, str, bytes]:
    """Open ``page`` in headless Chromium, let its scripts run (virtual time), and return the DOM after
    them, Chromium's stderr (console messages are logged there) and a PNG screenshot."""
    shot = workdir / "screenshot.png"
    profile = workdir / "profile"
    command = [
        _chromium_or_skip(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
        f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", f"--virtual-time-budget={budget_ms}",
        f"--window-size={window[0]},{window[1]}", "--hide-scrollbars", f"--screenshot={shot}", "--dump-dom",
        page.resolve().as_uri(),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert shot.is_file(), "no screenshot written"
    return done.stdout, done.stderr, shot.read_bytes()


def console_errors(stderr: str) -> list[str]:
    """Console messages that report an error (uncaught exceptions, console.error with 'Error')."""
    messages = [line for line in stderr.splitlines() if ":CONSOLE" in line]
    return [m for m in messages if re.search(r"uncaught|error", m, re.IGNORECASE)]


def decode_png(data: bytes) -> tuple[int, int, int, list[bytes]]:
    """(width, height, channels, rows) of an 8-bit, non-interlaced PNG, with zlib and struct only."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    width, height, depth, colour_type, _, _, interlace = header
    assert depth == 8 and interlace == 0, f"unsupported PNG: depth {depth}, interlace {interlace}"
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    raw = zlib.decompress(b"".join(idat))
    stride = width * channels
    previous = bytearray(stride)
    rows = []
    for y in range(height):
        start = y * (stride + 1)
        kind = raw[start]
        line = bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 1:  # Sub
            for i in range(channels, stride):
                line[i] = (line[i] + line[i - channels]) & 255
        elif kind == 2:  # Up
            line = bytearray((a + b) & 255 for a, b in zip(line, previous))
        elif kind == 3:  # Average
            for i in range(stride):
                left = line[i - channels] if i >= channels else 0
                line[i] = (line[i] + ((left + previous[i]) >> 1)) & 255
        elif kind == 4:  # Paeth
            for i in range(stride):
                a = line[i - channels] if i >= channels else 0
                b = previous[i]
                c = previous[i - channels] if i >= channels else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        previous = line
    return width, height, channels, rows


def test_console_error_detection_catches_a_broken_page(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<html><body><p>x</p><script>console.log('fine'); undefinedFunction();</script></body></html>")
    dom, stderr, png = run_chromium(page, tmp_path, window=(200, 100), budget_ms=200)
    assert "<p>x</p>" in dom
    assert any("undefinedFunction" in e for e in console_errors(stderr)), stderr[-2000:]
    width, height, _, _ = decode_png(png)
    assert (width, height) == (200, 100)


def test_report_renders_in_headless_chromium(tmp_path, samples, tuning_inputs):
    storage, name, export_path = tuning_inputs
    report = make_report(
        [SAMPLES], tmp_path / "report.html", storage=storage, study_names=[name], tuned_paths=[export_path],
        title="Chromium check",
    )  # fmt: skip
    dom, stderr, png = run_chromium(tmp_path / "report.html", tmp_path)

    assert console_errors(stderr) == []
    # every figure's container is there and plotly drew into it (svg.main-svg exists only after rendering)
    starts = [m.start() for m in re.finditer(r"<div[^>]*class=\"[^\"]*plotly-graph-div", dom)]
    assert len(starts) == report.figure_count == 8
    for index, start in enumerate(starts):
        end = starts[index + 1] if index + 1 < len(starts) else len(dom)
        assert re.search(r"<svg[^>]*class=\"main-svg\"", dom[start:end]), f"figure {index} was not rendered"
    ids = re.findall(r"<div[^>]*id=\"(figure-[^\"]+)\"[^>]*class=\"[^\"]*plotly-graph-div", dom)
    ids += re.findall(r"<div[^>]*class=\"[^\"]*plotly-graph-div[^>]*id=\"(figure-[^\"]+)\"", dom)
    assert sorted(set(ids)) == sorted(f"figure-{s.id}" for s in report.sections if s.figure is not None)
    # the titles plotly drew (svg text.gtitle) are the figures' titles, each with its environment line
    drawn = [html_lib.unescape(re.sub(r"<[^>]+>", " ", t)) for t in re.findall(r"<text class=\"gtitle\".*?</text>", dom, re.S)]
    drawn_text = " ".join(" ".join(d.split()) for d in drawn)
    for title in report.figure_titles:
        assert " ".join(title.split()) in drawn_text, title
    assert drawn_text.count("SYNTHETIC sample") == 5 and drawn_text.count("Tuning GPU 7") == 3
    assert "<title>Chromium check</title>" in dom

    width, height, channels, rows = decode_png(png)
    assert (width, height) == (1280, 1600)
    colours = set()
    non_white = 0
    for line in rows:
        pixels = [line[i : i + 3] for i in range(0, len(line), channels)]
        colours.update(pixels)
        non_white += sum(1 for p in pixels if p != b"\xff\xff\xff")
    assert len(colours) > 100, f"screenshot looks blank: {len(colours)} colours"
    assert non_white > 0.02 * width * height
