"""Assemble one self-contained HTML report: figures (plotly.js inlined once), environment, tables.

The page works offline: plotly.js is embedded with the first figure (``include_plotlyjs=True``) and
every later figure reuses it (``include_plotlyjs=False``); nothing is fetched from a CDN. Sections:

1. the paper's Figure 1 (speed-up of chunkwise over recurrent against T, one line per head dim);
2. throughput (tokens/s) against T per variant and peer, forward and forward+backward, a panel per
   head dim (one figure per family and mode);
3. measured time against the roofline floor, and the roofline itself under the measured ceilings;
4. tuning studies (optimisation history, parameter importances) and tuner exports, when given;
5. the skipped/failed cases (never plotted) and every measurement, as tables.

A figure that the inputs cannot make is replaced by a line saying why.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import pandas as pd

from . import figures
from .load import MODES, Results, env_line, environment_caption


@dataclass
class Section:
    """One heading of the report: a figure (or a note saying why there is none) and optional HTML."""

    id: str
    heading: str
    description: str = ""
    figure: object = None  # plotly Figure
    note: str = ""
    extra_html: str = ""


@dataclass
class Report:
    """The assembled page and what went into it (tests and the CLI read these)."""

    html: str
    sections: list[Section] = field(default_factory=list)

    @property
    def figure_count(self) -> int:
        return sum(1 for s in self.sections if s.figure is not None)

    @property
    def figure_titles(self) -> list[str]:
        """The first title line of every figure, in page order."""
        return [s.figure.layout.title.text.split("<br>")[0] for s in self.sections if s.figure is not None]


# --------------------------------------------------------------------------------------------- sections
def result_sections(results: Results, *, numerator: str = "chunk", baseline: str = "recurrent") -> list[Section]:
    """The figures of sweep results, in page order, plus the skipped/failed and all-rows tables."""
    ok = results.ok
    caption = html.escape(environment_caption(results.environments))
    sections: list[Section] = []

    pairs = figures.speedup_pairs(ok, numerator, baseline)
    pair_text = f"{pairs[0][1]} time / {pairs[0][0]} time" if pairs else f"{baseline} time / {numerator} time"
    sections.append(
        Section(
            id="speedup",
            heading="Speed-up of the chunkwise form over the recurrent form (the paper's Figure 1)",
            description=(
                f"y = {pair_text} on the same shape (above 1: the chunkwise form is faster); x = sequence "
                "length on a log2 axis, total tokens B*T fixed as in the sweep; one line per head dim, one "
                "panel per mode. Where our variants are missing, the peer's fla_chunk / fla_recurrent stand in; "
                "when both are present, the peer's lines are dashed."
            ),
            figure=figures.speedup_figure(ok, caption, numerator=numerator, baseline=baseline),
            note=(
                f"needs successful rows of both {numerator!r} and {baseline!r} (or of the peers fla_chunk and "
                "fla_recurrent) on the same shapes, mode and dtype"
            ),
        )
    )

    families = sorted(ok["family"].unique(), key=lambda f: (f != "delta_rule", f)) or ["delta_rule"]
    for family in families:
        present = set(ok[ok["family"] == family]["mode"])
        wanted = [m for m in MODES if m in present or (family == "delta_rule" and m in ("fwd", "fwd+bwd"))]
        wanted += sorted(present - set(wanted))
        for mode in wanted:
            suffix = "" if family == "delta_rule" else f" ({family})"
            sections.append(
                Section(
                    id=f"throughput-{family}-{mode.replace('+', '-')}",
                    heading=f"Throughput, {figures.MODE_NAMES.get(mode, mode)}{suffix}",
                    description=(
                        "Tokens per second (B*T / median time) against sequence length, one line per variant "
                        "and peer, one panel per head dim; both axes logarithmic."
                    ),
                    figure=figures.throughput_figure(ok, caption, mode, family),
                    note=f"no successful {mode} rows of family {family}",
                )
            )

    sections.append(
        Section(
            id="floor",
            heading="Time against the roofline floor",
            description=(
                "Each point is one variant on one shape: its measured median against the floor of its cost "
                "model, max(FLOPs / matmul peak, bytes / copy bandwidth). Points on the solid line would "
                "run at the hardware's limit; the dotted lines are 10x and 100x the floor."
            ),
            figure=figures.floor_figure(ok, caption),
            note="the results carry no floor_ms (the sweep measured no ceilings)",
        )
    )
    ceilings = next((c for c in results.ceilings if c), {})
    sections.append(
        Section(
            id="roofline",
            heading="Roofline",
            description=(
                "Achieved TFLOP/s against arithmetic intensity (FLOPs per byte of the cost model's minimum "
                "traffic), under the ceilings measured in the same run: min(matmul peak, copy bandwidth x "
                "intensity). " + _ceilings_text(ceilings)
            ),
            figure=figures.roofline_figure(ok, ceilings, caption),
            note="needs ceilings.json (copy_gbps, matmul_*_tflops) and rows with tflops and gbps",
        )
    )
    return sections


def _ceilings_text(ceilings: dict) -> str:
    if not ceilings:
        return ""
    parts = []
    if ceilings.get("copy_gbps"):
        parts.append(f"copy {float(ceilings['copy_gbps']):.0f} GB/s")
    if ceilings.get("matmul_bf16_tflops"):
        parts.append(f"bf16 matmul {float(ceilings['matmul_bf16_tflops']):.0f} TFLOP/s")
    if ceilings.get("matmul_fp32_tflops"):
        parts.append(f"fp32 matmul {float(ceilings['matmul_fp32_tflops']):.0f} TFLOP/s")
    return "Measured ceilings: " + ", ".join(parts) + "." if parts else ""


def study_sections(studies: Iterable) -> list[Section]:
    """Optimisation history and parameter importances of each tuning study."""
    sections: list[Section] = []
    for index, study in enumerate(studies):
        name = html.escape(study.study_name)
        sections.append(
            Section(
                id=f"study-{index}-history",
                heading=f"Tuning study {name}: optimisation history",
                description="Objective (median ms) of every completed trial and the best so far (optuna). "
                + _trial_summary(study),
                figure=figures.study_history_figure(study),
                note="the study has no completed trial",
            )
        )
        sections.append(
            Section(
                id=f"study-{index}-importance",
                heading=f"Tuning study {name}: parameter importances",
                description="How much each launch parameter explains the objective's variance (optuna, fANOVA).",
                figure=figures.study_importance_figure(study),
                note="needs at least two completed trials with a parameter that varied",
            )
        )
    return sections


def _trial_summary(study) -> str:
    """'12 trials: 9 complete, 3 pruned (invalid configs); best 0.412 ms with {...}.'"""
    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for trial in trials:
        states[trial.state.name.lower()] = states.get(trial.state.name.lower(), 0) + 1
    text = f"{len(trials)} trials: " + ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
    if states.get("pruned"):
        text += " (pruned: invalid configs, with the reason in the trial's user attributes)"
    try:
        best = study.best_trial
    except ValueError:  # no completed trial
        return text + "."
    return text + f"; best {best.value:.4g} with {json.dumps(best.params, sort_keys=True)}."


def export_sections(exports: Iterable[dict]) -> list[Section]:
    """Each tuner export: speed-up of the best configs over the defaults, and the configs as a table."""
    sections: list[Section] = []
    for index, export in enumerate(exports):
        rows = pd.DataFrame(export.get("rows", []))
        wanted = ("variant", "family", "mode", "dtype", "K", "V", "block_size", "T_bucket", "config", "median_ms",
                  "default_median_ms", "speedup")  # fmt: skip
        columns = [c for c in wanted if c in rows]
        sections.append(
            Section(
                id=f"tuned-{index}",
                heading=f"Tuned configs: {html.escape(Path(export.get('source', 'export')).name)}",
                description="Best config per variant, dtype, head dims and sequence-length bucket, against the default config.",
                figure=figures.tuned_speedup_figure(export),
                note="the export records no speed-up over the default config",
                extra_html=_table_html(rows[columns]) if len(columns) else "",
            )
        )
    return sections


# ------------------------------------------------------------------------------------------------- html
def _table_html(frame: pd.DataFrame, classes: str = "data") -> str:
    """A plain escaped HTML table (pandas' to_html escapes cell text)."""
    if frame.empty:
        return "<p class='note'>none</p>"
    return frame.to_html(index=False, classes=classes, border=0, na_rep="-", escape=True, float_format=lambda x: f"{x:.4g}")


def _not_ok_html(results: Results) -> str:
    rows = results.not_ok
    if rows.empty:
        return "<p class='note'>Every case ran.</p>"
    frame = rows.sort_values(["status", "variant", "mode", "K", "T"])[
        ["label", "family", "mode", "dtype", "B", "T", "H", "K", "V", "status", "reason"]
    ].rename(columns={"label": "variant"})
    return _table_html(frame)


def _all_rows_html(results: Results) -> str:
    ok = results.ok.sort_values(["family", "mode", "dtype", "K", "V", "T", "variant"])
    frame = ok[["label", "family", "mode", "dtype", "B", "T", "H", "K", "V", "block_size", "median_ms", "cv",
                "tokens_per_s", "tflops", "gbps", "floor_ms", "floor_ratio", "config"]].rename(columns={"label": "variant"})  # fmt: skip
    return f"<details><summary>{len(frame)} successful measurements</summary>{_table_html(frame)}</details>"


def _environment_html(results: Optional[Results]) -> str:
    if results is None:
        return ""
    keys = ("gpu", "compute_capability", "sm_count", "clocks", "driver", "cuda", "torch", "triton", "deltalab",
            "python", "git_commit", "date", "hostname", "interpreter")  # fmt: skip
    records = []
    for env, ceilings, source in zip(results.environments, results.ceilings, results.sources):
        record = {"source": source, **{k: env.get(k) for k in keys}}
        for name, value in (ceilings or {}).items():
            if name != "synthetic":
                record[name] = value
        records.append({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in record.items()})
    frame = pd.DataFrame(records, index=[f"run {i + 1}" for i in range(len(records))])
    return _table_html(frame.T.reset_index().rename(columns={"index": "field"}), classes="data env")


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Liberation Sans", sans-serif; margin: 2em auto;
       max-width: 1400px; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
.banner { background: #fff3cd; border: 2px solid #d39e00; padding: 0.8em 1em; font-weight: bold; margin: 1em 0; }
.note { color: #8a6d3b; font-style: italic; }
.caption { color: #555; }
table.data { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
table.data th, table.data td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
table.data th { background: #f4f4f4; } table.data td:last-child { text-align: left; }
.figure { margin: 0.5em 0 1.5em 0; }
nav ul { columns: 2; }
"""


def render_html(sections: list[Section], *, title: str, results: Optional[Results] = None, notes: Iterable[str] = ()) -> str:
    """The whole page. plotly.js is inlined with the first figure only; the others reuse it."""
    body: list[str] = []
    esc_title = html.escape(title)
    body.append(f"<h1>{esc_title}</h1>")
    if results is not None:
        body.append(f"<p class='caption'>{html.escape(environment_caption(results.environments))}</p>")
        if results.synthetic:
            body.append(
                "<div class='banner'>SYNTHETIC sample results: these numbers were generated, not measured "
                "(deltalab.reports.synthetic). Build this report from a real sweep folder for real numbers.</div>"
            )
        if results.interpreted:
            body.append(
                "<div class='banner'>CPU run: the Triton kernels ran under Triton's CPU interpreter, so these "
                "times measure the interpreter, not GPU performance.</div>"
            )
    toc = "".join(f"<li><a href='#{s.id}'>{html.escape(s.heading, quote=False)}</a></li>" for s in sections)
    extra_toc = ""
    if results is not None:
        extra_toc = "<li><a href='#not-ok'>Skipped and failed cases</a></li><li><a href='#environment'>Environment</a></li>"
    body.append(f"<nav><ul>{toc}{extra_toc}</ul></nav>")

    plotly_inlined = False
    for section in sections:
        body.append(f"<section id='{section.id}'><h2>{html.escape(section.heading, quote=False)}</h2>")
        if section.description:
            body.append(f"<p>{html.escape(section.description, quote=False)}</p>")
        if section.figure is not None:
            div = section.figure.to_html(
                full_html=False,
                include_plotlyjs=not plotly_inlined,
                div_id=f"figure-{section.id}",
                config={"displaylogo": False, "responsive": True},
            )
            plotly_inlined = True
            body.append(f"<div class='figure'>{div}</div>")
        else:
            body.append(f"<p class='note'>Not shown: {html.escape(section.note, quote=False)}.</p>")
        if section.extra_html:
            body.append(section.extra_html)
        body.append("</section>")

    if results is not None:
        body.append("<section id='not-ok'><h2>Skipped and failed cases</h2>")
        body.append("<p>Rows whose status is not \"ok\", with the reason recorded by the sweep. They are not plotted.</p>")
        body.append(_not_ok_html(results))
        body.append("</section>")
        body.append("<section id='all-rows'><h2>All measurements</h2>")
        body.append(_all_rows_html(results))
        body.append("</section>")
        body.append("<section id='environment'><h2>Environment</h2>")
        body.append(_environment_html(results))
        body.append("</section>")
    all_notes = list(notes) + (results.notes if results is not None else [])
    if all_notes:
        body.append("<ul class='note'>" + "".join(f"<li>{html.escape(n)}</li>" for n in all_notes) + "</ul>")
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sources = ", ".join(html.escape(s) for s in (results.sources if results is not None else []))
    body.append(f"<footer><p class='caption'>Generated by <code>deltalab report</code> on {stamp}"
                f"{' from ' + sources if sources else ''}.</p></footer>")  # fmt: skip
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'>\n<title>{esc_title}</title>\n"
        f"<style>{CSS}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )


def build_report(
    results: Optional[Results] = None,
    *,
    studies: Iterable = (),
    exports: Iterable[dict] = (),
    title: str = "deltalab report",
    numerator: str = "chunk",
    baseline: str = "recurrent",
) -> Report:
    """Every section for the given results, studies and tuner exports, rendered as one page."""
    studies, exports = list(studies), list(exports)
    if results is None and not studies and not exports:
        raise ValueError("RESULTS: nothing to report (give results, --study/--storage or --tuned)")
    sections: list[Section] = []
    if results is not None:
        sections += result_sections(results, numerator=numerator, baseline=baseline)
    sections += study_sections(studies)
    sections += export_sections(exports)
    return Report(html=render_html(sections, title=title, results=results), sections=sections)


def write_report(path: str | Path, report: Report) -> Path:
    """Write the page to ``path`` (parent folders created)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.html, encoding="utf-8")
    return out


__all__ = ["Report", "Section", "build_report", "render_html", "write_report", "env_line"]
