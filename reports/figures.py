"""The report's figures, one small function each, all plotly.

Each function takes rows that ``load.Results`` produced (status "ok" only: nothing else is plotted) and
a ``caption`` naming GPU, versions and date, which goes under the title; it returns a Figure, or None
when the rows cannot make that figure (the HTML assembler says why).

* ``speedup_figure``     -- the paper's Figure 1: chunkwise over recurrent speed-up against sequence
  length (log2), one line per head dim, one panel per mode.
* ``throughput_figure``  -- tokens/s against sequence length, one line per variant or peer, one panel
  per head dim (one figure per family and mode).
* ``floor_figure``       -- measured time against the roofline floor of each shape (log-log).
* ``roofline_figure``    -- achieved TFLOP/s against arithmetic intensity under the measured ceilings.
* ``study_history_figure``, ``study_importance_figure`` -- optuna.visualization for tuning studies.
* ``tuned_speedup_figure`` -- a tuner export's speed-up of each best config over the default config.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional

import pandas as pd
import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from deltalab.harness.roofline import matmul_ceiling_key

from .load import MODES

MODE_NAMES = {"fwd": "forward", "fwd+bwd": "forward + backward", "bwd": "backward"}
# Series colours are fixed per name so a variant keeps its colour in every figure.
KNOWN_ORDER = ("chunk", "recurrent", "fla_chunk", "fla_recurrent", "sdpa", "torch_chunk", "reference")
PALETTE = plotly.colors.qualitative.Plotly + plotly.colors.qualitative.D3
PEER_PAIR = ("fla_chunk", "fla_recurrent")
TEMPLATE = "plotly_white"


# --------------------------------------------------------------------------------------------- helpers
def seq_label(T: int) -> str:
    """512 -> '512', 16384 -> '16K', 65536 -> '64K'."""
    T = int(T)
    return f"{T // 1024}K" if T >= 1024 and T % 1024 == 0 else str(T)


def titled(title: str, caption: str) -> dict:
    """A plotly title with the environment caption on a second, smaller line."""
    return {"text": f"{title}<br><sup>{caption}</sup>", "x": 0.01, "xanchor": "left"}


def colour_map(names: Iterable[str]) -> dict[str, str]:
    """A stable colour per series name: known variants first, then the others alphabetically."""

    def rank(name: str) -> tuple:
        base = name.split(" (")[0]  # "chunk (GPU name)" -> "chunk"
        return (KNOWN_ORDER.index(base) if base in KNOWN_ORDER else len(KNOWN_ORDER), name)

    unique = sorted(set(names), key=rank)
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(unique)}


def _seq_axis(fig: go.Figure, values: Iterable[int], row: Optional[int] = None, col: Optional[int] = None) -> None:
    """A log2 sequence-length axis: ticks at the measured lengths, labelled 512, 1K, ... 64K."""
    ticks = sorted({int(v) for v in values})
    fig.update_xaxes(
        type="log", tickvals=ticks, ticktext=[seq_label(t) for t in ticks], title_text="sequence length T",
        row=row, col=col,
    )  # fmt: skip


def _one_point_per_length(line: pd.DataFrame) -> pd.DataFrame:
    """One row per T on a line: where several shapes share a T, keep the one whose total tokens B*T is
    the line's most common (the fixed-tokens setting of the sweep), so lines do not zigzag."""
    if line["T"].is_unique:
        return line.sort_values("T")
    tokens = line["B"] * line["T"]
    usual = tokens.mode().iloc[0]
    preferred = line.assign(_rank=(tokens != usual).astype(int)).sort_values(["T", "_rank"])
    return preferred.drop_duplicates("T").drop(columns="_rank")


def head_text(head_dim: str) -> str:
    """'128' -> 'D=128'; 'K64/V100' -> 'K=64 V=100'."""
    return f"D={head_dim}" if "/" not in head_dim else head_dim.replace("/", " ").replace("K", "K=").replace("V", "V=")


def _panel_key(row) -> str:
    """Panel label of a shape: 'D=128', 'K=64 V=100', plus the key block for block-diagonal rows."""
    K, block = int(row["K"]), int(row["block_size"])
    return head_text(row["head_dim"]) + (f", block {block}" if block != K else "")


def _head_dim_sort_key(label: str) -> tuple:
    digits = [int("".join(ch for ch in part if ch.isdigit()) or 0) for part in label.split(",")[0].split()]
    return tuple(digits), label


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def _ordered_modes(modes: Iterable[str]) -> list[str]:
    present = set(modes)
    return [m for m in MODES if m in present] + sorted(present - set(MODES))


# --------------------------------------------------------------------------------------------- speed-up
def speedup_pairs(ok: pd.DataFrame, numerator: str = "chunk", baseline: str = "recurrent") -> list[tuple[str, str]]:
    """(numerator, denominator) variant pairs for the speed-up figure, first the main pair.

    The main pair is ``numerator`` over ``baseline``; where either has no rows the peer's
    (fla_chunk, fla_recurrent) stands in for it. When the main pair is ours and the peer pair is also
    present, the peer pair follows (drawn dashed).
    """
    present = set(ok["variant"])
    num = numerator if numerator in present else PEER_PAIR[0]
    den = baseline if baseline in present else PEER_PAIR[1]
    pairs: list[tuple[str, str]] = []
    if num in present and den in present and num != den:
        pairs.append((num, den))
    if PEER_PAIR[0] in present and PEER_PAIR[1] in present and PEER_PAIR not in pairs:
        pairs.append(PEER_PAIR)
    return pairs


def resolve_baseline(ok: pd.DataFrame, baseline: str) -> str:
    """``baseline``, or the peer's counterpart (fla_<baseline>) when ours has no rows but the peer has."""
    present = set(ok["variant"])
    if baseline not in present and f"fla_{baseline}" in present:
        return f"fla_{baseline}"
    return baseline


def speedups(ok: pd.DataFrame, numerator: str, baseline: str) -> pd.DataFrame:
    """baseline time / numerator time for every shape, mode and dtype both were measured on."""
    key = ["family", "mode", "dtype", "B", "T", "H", "K", "V", "block_size", "head_dim", "gpu"]
    frame = ok.assign(gpu=ok["gpu"].fillna("unknown GPU"))
    num = frame[frame["variant"] == numerator][key + ["median_ms"]].rename(columns={"median_ms": "num_ms"})
    den = frame[frame["variant"] == baseline][key + ["median_ms"]].rename(columns={"median_ms": "den_ms"})
    merged = num.merge(den, on=key).drop_duplicates(subset=key, keep="last")
    merged["speedup"] = merged["den_ms"] / merged["num_ms"]
    merged["numerator"], merged["baseline"] = numerator, baseline
    return merged.sort_values(["mode", "K", "V", "T"]).reset_index(drop=True)


def speedup_figure(ok: pd.DataFrame, caption: str, numerator: str = "chunk", baseline: str = "recurrent") -> Optional[go.Figure]:
    """Figure 1 of the paper: speed-up of the chunkwise form over the recurrent form against T (log2),
    one line per head dim, one panel per mode present; the peer pair dashed when ours is shown too."""
    pairs = speedup_pairs(ok, numerator, baseline)
    tables = [(pair, speedups(ok, *pair)) for pair in pairs]
    tables = [(pair, table) for pair, table in tables if not table.empty]
    if not tables:
        return None
    modes = _ordered_modes(m for _, table in tables for m in table["mode"])
    every = pd.concat([table for _, table in tables])
    several_dtypes = every["dtype"].nunique() > 1
    several_gpus = every["gpu"].nunique() > 1
    fig = make_subplots(rows=1, cols=len(modes), subplot_titles=[MODE_NAMES.get(m, m) for m in modes], shared_yaxes=True)
    # one colour per line (head dim, and dtype / GPU / key block where those vary); the peer's line of the
    # same shape shares it, dashed
    group_cols = ["head_dim", "K", "block_size", "dtype", "gpu"]
    line_keys = sorted(
        {tuple(k) for k in every[group_cols].itertuples(index=False)}, key=lambda k: (_head_dim_sort_key(k[0]), k[1:])
    )
    colours = {key: PALETTE[i % len(PALETTE)] for i, key in enumerate(line_keys)}
    legend_shown: set[str] = set()
    for pair_index, ((num, den), table) in enumerate(tables):
        for key, line in table.groupby(group_cols, sort=False):
            head, K, block, dtype, gpu = key
            name = head_text(head) + (f" {dtype}" if several_dtypes else "") + (f" ({gpu})" if several_gpus else "")
            if block != K:
                name += f" block {block}"
            if pair_index:
                name += f" · {num}/{den}"
            for mode_index, mode in enumerate(modes, start=1):
                points = _one_point_per_length(line[line["mode"] == mode])
                if points.empty:
                    continue
                fig.add_trace(
                    go.Scatter(
                        x=points["T"], y=points["speedup"], name=name, legendgroup=name,
                        showlegend=name not in legend_shown,
                        mode="lines+markers",
                        line={"color": colours[tuple(key)], "dash": "dash" if pair_index else "solid"},
                        marker={"symbol": "circle-open" if pair_index else "circle", "size": 8},
                        customdata=points[["B", "H", "num_ms", "den_ms"]].to_numpy(),
                        hovertemplate=(
                            f"{num} over {den}, {head_text(head)}<br>T=%{{x}} B=%{{customdata[0]}} H=%{{customdata[1]}}<br>"
                            f"{num} %{{customdata[2]:.3f}} ms, {den} %{{customdata[3]:.3f}} ms<br>"
                            "speed-up %{y:.2f}x<extra></extra>"
                        ),
                    ),  # fmt: skip
                    row=1, col=mode_index,
                )  # fmt: skip
                legend_shown.add(name)
    all_lengths = pd.concat([t["T"] for _, t in tables])
    for mode_index in range(1, len(modes) + 1):
        _seq_axis(fig, all_lengths, row=1, col=mode_index)
        fig.add_hline(y=1.0, line={"color": "grey", "width": 1, "dash": "dot"}, row=1, col=mode_index)
    main_num, main_den = tables[0][0]
    main = f"{main_num} over {main_den}"
    subtitle = f" (dashed: {PEER_PAIR[0]} over {PEER_PAIR[1]})" if len(tables) > 1 else ""
    what = "Speed-up of the chunkwise form over the recurrent form" if "recurrent" in main_den else "Speed-up"
    fig.update_yaxes(title_text="speed-up (x)", row=1, col=1)
    fig.update_layout(
        title=titled(f"{what}: {main}{subtitle}", caption),
        template=TEMPLATE, height=480, margin={"t": 110}, legend_title_text="head dim",
    )  # fmt: skip
    return fig


# ------------------------------------------------------------------------------------------- throughput
def throughput_figure(ok: pd.DataFrame, caption: str, mode: str, family: str = "delta_rule") -> Optional[go.Figure]:
    """Tokens/s against T for every variant and peer in ``mode``; one panel per head dim (log axes)."""
    rows = ok[(ok["mode"] == mode) & (ok["family"] == family)]
    rows = rows[rows["tokens_per_s"] > 0]
    if rows.empty:
        return None
    rows = rows.assign(panel=[_panel_key(r) for _, r in rows.iterrows()])
    panels = sorted(rows["panel"].unique(), key=_head_dim_sort_key)
    n_rows, n_cols = _grid(len(panels))
    several_dtypes = rows["dtype"].nunique() > 1
    fig = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=panels, horizontal_spacing=0.06, vertical_spacing=0.14)
    colours = colour_map(ok["label"])
    legend_shown: set[str] = set()
    for index, panel in enumerate(panels):
        r, c = index // n_cols + 1, index % n_cols + 1
        here = rows[rows["panel"] == panel]
        for (label, dtype), line in here.groupby(["label", "dtype"], sort=False):
            points = _one_point_per_length(line)
            name = label + (f" {dtype}" if several_dtypes else "")
            fig.add_trace(
                go.Scatter(
                    x=points["T"], y=points["tokens_per_s"], name=name, legendgroup=name,
                    showlegend=name not in legend_shown, mode="lines+markers",
                    line={"color": colours.get(label), "dash": "dot" if dtype != rows["dtype"].iloc[0] else "solid"},
                    customdata=points[["B", "H", "median_ms"]].to_numpy(),
                    hovertemplate=(
                        f"{name}, {panel}<br>T=%{{x}} B=%{{customdata[0]}} H=%{{customdata[1]}}<br>"
                        "%{customdata[2]:.3f} ms, %{y:.3s} tokens/s<extra></extra>"
                    ),
                ),  # fmt: skip
                row=r, col=c,
            )  # fmt: skip
            legend_shown.add(name)
        _seq_axis(fig, here["T"], row=r, col=c)
        fig.update_yaxes(type="log", row=r, col=c, title_text="tokens/s" if c == 1 else None)
    family_text = "" if family == "delta_rule" else f" ({family})"
    fig.update_layout(
        title=titled(f"Throughput, {MODE_NAMES.get(mode, mode)}{family_text}: tokens/s against sequence length", caption),
        template=TEMPLATE, height=140 + 360 * n_rows, margin={"t": 110}, legend_title_text="variant",
    )  # fmt: skip
    return fig


# --------------------------------------------------------------------------------------------- roofline
MODE_SYMBOLS = {"fwd": "circle", "fwd+bwd": "diamond", "bwd": "square"}  # marker per mode


def add_shape_markers(fig: go.Figure, rows: pd.DataFrame, colours: dict, *, x: str, y: str, extra: str,
                      detail: str) -> None:
    """One marker trace per (variant label, mode) -- colour by variant, symbol by mode -- of ``rows``'
    columns ``x`` and ``y``; the hover names the shape, then ``detail``, which may use ``%{customdata[4]}``
    (the column ``extra``)."""
    for (label, mode), group in rows.groupby(["label", "mode"], sort=False):
        fig.add_trace(
            go.Scatter(
                x=group[x], y=group[y], mode="markers", name=f"{label} {mode}",
                marker={"color": colours.get(label), "symbol": MODE_SYMBOLS.get(mode, "x"), "size": 9, "opacity": 0.85},
                customdata=group[["B", "T", "H", "head_dim", extra, "dtype"]].to_numpy(),
                hovertemplate=(
                    f"{label} {mode}<br>B=%{{customdata[0]}} T=%{{customdata[1]}} H=%{{customdata[2]}} "
                    f"D=%{{customdata[3]}} %{{customdata[5]}}<br>{detail}<extra></extra>"
                ),
            )  # fmt: skip
        )


def floor_figure(ok: pd.DataFrame, caption: str) -> Optional[go.Figure]:
    """Measured median time against the roofline floor (max of FLOP time and byte time) of each
    variant/shape/mode, log-log; lines mark 1x (the floor), 10x and 100x the floor."""
    rows = ok[(ok["floor_ms"] > 0) & (ok["median_ms"] > 0)]
    if rows.empty:
        return None
    colours = colour_map(ok["label"])
    fig = go.Figure()
    add_shape_markers(fig, rows, colours, x="floor_ms", y="median_ms", extra="floor_ratio",
                      detail="measured %{y:.3f} ms, floor %{x:.4f} ms<br>%{customdata[4]:.1f}x the floor")
    low, high = rows["floor_ms"].min() / 1.5, rows["floor_ms"].max() * 1.5
    for factor, text in ((1, "floor"), (10, "10x floor"), (100, "100x floor")):
        fig.add_trace(
            go.Scatter(
                x=[low, high], y=[low * factor, high * factor], mode="lines", name=text, hoverinfo="skip",
                line={"color": "grey", "width": 1, "dash": "solid" if factor == 1 else "dot"},
            )  # fmt: skip
        )
    fig.update_xaxes(type="log", title_text="roofline floor (ms): max(FLOPs / peak, bytes / bandwidth)")
    fig.update_yaxes(type="log", title_text="measured median (ms)")
    fig.update_layout(
        title=titled("Measured time against the roofline floor (each point: a variant on a shape)", caption),
        template=TEMPLATE, height=560, margin={"t": 110}, legend_title_text="variant, mode",
    )  # fmt: skip
    return fig


def peak_tflops(ceilings: dict, dtype: str) -> Optional[float]:
    """The matmul ceiling that applies to ``dtype`` (harness.roofline.matmul_ceiling_key), None when the
    ceilings lack it."""
    value = ceilings.get(matmul_ceiling_key(dtype))
    return float(value) if value else None


def roofline_figure(ok: pd.DataFrame, ceilings: dict, caption: str) -> Optional[go.Figure]:
    """The roofline: achieved TFLOP/s against arithmetic intensity (FLOPs per byte of the cost model),
    under min(matmul peak, copy bandwidth x intensity) for each dtype present."""
    bandwidth = ceilings.get("copy_gbps") if ceilings else None
    rows = ok[(ok["tflops"] > 0) & (ok["gbps"] > 0)]
    if not bandwidth or rows.empty:
        return None
    rows = rows.assign(intensity=rows["tflops"] * 1e3 / rows["gbps"])  # FLOP per byte
    colours = colour_map(ok["label"])
    fig = go.Figure()
    add_shape_markers(fig, rows, colours, x="intensity", y="tflops", extra="gbps",
                      detail="%{y:.1f} TFLOP/s, %{customdata[4]:.0f} GB/s, %{x:.1f} FLOP/byte")
    low, high = rows["intensity"].min() / 2, rows["intensity"].max() * 2
    for dtype in sorted(rows["dtype"].unique()):
        peak = peak_tflops(ceilings, dtype)
        if not peak:
            continue
        ridge = peak * 1e3 / bandwidth  # FLOP/byte where the bandwidth slope meets the peak
        xs = sorted({low, min(max(ridge, low), high), high})
        fig.add_trace(
            go.Scatter(
                x=xs, y=[min(peak, bandwidth * x / 1e3) for x in xs], mode="lines", hoverinfo="skip",
                name=f"ceiling {dtype}: {peak:.0f} TFLOP/s, {bandwidth:.0f} GB/s",
                line={"color": "black", "width": 1.5, "dash": "solid" if "16" in dtype else "dash"},
            )  # fmt: skip
        )
    fig.update_xaxes(type="log", title_text="arithmetic intensity (FLOP / byte, cost model)")
    fig.update_yaxes(type="log", title_text="achieved TFLOP/s")
    fig.update_layout(
        title=titled("Roofline: achieved TFLOP/s against arithmetic intensity, under the measured ceilings", caption),
        template=TEMPLATE, height=560, margin={"t": 110}, legend_title_text="variant, mode",
    )  # fmt: skip
    return fig


# ---------------------------------------------------------------------------------------------- tuning
def study_caption(study) -> str:
    """GPU, versions and date of a tuning study, from its user attributes (or its first trial's)."""
    from .load import env_line

    attrs = dict(study.user_attrs)
    for nested in ("environment", "deltalab"):  # the tuner keeps its metadata under "deltalab"
        if isinstance(attrs.get(nested), dict):
            attrs = {**attrs[nested], **attrs}
    trials = study.get_trials(deepcopy=False)
    if trials and not any(attrs.get(k) for k in ("gpu", "device", "device_name")):
        first = dict(trials[0].user_attrs)
        nested = first.get("environment") if isinstance(first.get("environment"), dict) else {}
        attrs = {**nested, **first, **attrs}
    attrs = {k: v for k, v in attrs.items() if not isinstance(v, (dict, list))}  # e.g. the metadata itself
    if not attrs.get("gpu"):
        attrs["gpu"] = attrs.get("device_name") or attrs.get("device") or "GPU not recorded"
    if not attrs.get("date"):
        started = [t.datetime_start for t in trials if t.datetime_start is not None]
        if started:
            attrs["date"] = min(started).isoformat()
    return env_line(attrs)


def _completed(study) -> int:
    import optuna

    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def study_history_figure(study) -> Optional[go.Figure]:
    """optuna's optimisation history (objective per trial and best so far) of a finished study."""
    import optuna.visualization as ov

    if _completed(study) == 0:
        return None
    fig = ov.plot_optimization_history(study)
    fig.update_layout(
        title=titled(f"Tuning study {study.study_name!r}: optimisation history", study_caption(study)),
        template=TEMPLATE, height=460, margin={"t": 110},
    )  # fmt: skip
    return fig


def study_importance_figure(study) -> Optional[go.Figure]:
    """optuna's parameter importances (fANOVA) of a study; None when there is nothing to rank (fewer
    than two completed trials, or no parameter that varied)."""
    import optuna.visualization as ov

    if _completed(study) < 2:
        return None
    try:
        fig = ov.plot_param_importances(study)
    except (ValueError, RuntimeError):  # e.g. every parameter constant over the completed trials
        return None
    if not fig.data:
        return None
    fig.update_layout(
        title=titled(f"Tuning study {study.study_name!r}: parameter importances", study_caption(study)),
        template=TEMPLATE, height=420, margin={"t": 110},
    )  # fmt: skip
    return fig


def export_device_name(export: dict) -> str:
    """The GPU a tuner export was made on ({"device": {"name": ...}} or a plain string field)."""
    device = export.get("device")
    if isinstance(device, dict):
        device = device.get("name")
    return str(device or export.get("device_name") or export.get("gpu") or "GPU not recorded")


def tuned_speedup_figure(export: dict) -> Optional[go.Figure]:
    """A tuner export's speed-up of the best config over the default config, one bar per entry."""
    from .load import env_line

    rows = pd.DataFrame(export.get("rows", []))
    if rows.empty or "speedup" not in rows:
        return None
    rows = rows[pd.to_numeric(rows["speedup"], errors="coerce") > 0]
    if rows.empty:
        return None
    labels = [
        f"{r.variant} {getattr(r, 'mode', '') or ''} {r.dtype} K{r.K}/V{r.V} "
        f"T~{seq_label(r.T_bucket) if str(r.T_bucket).isdigit() else r.T_bucket}".replace("  ", " ")
        for r in rows.itertuples()
    ]  # fmt: skip
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):  # bars with the same label would merge: number the repeats
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            labels[i] = f"{label} #{seen[label]}"
    fig = go.Figure(
        go.Bar(
            x=labels, y=rows["speedup"].astype(float), customdata=rows[["config", "median_ms"]].to_numpy(),
            marker_color=["#2ca02c" if s >= 1 else "#d62728" for s in rows["speedup"].astype(float)],
            hovertemplate="%{x}<br>best config %{customdata[0]}<br>%{customdata[1]} ms, %{y:.2f}x the default<extra></extra>",
        )  # fmt: skip
    )
    fig.add_hline(y=1.0, line={"color": "grey", "width": 1, "dash": "dot"})
    env = {**export, "gpu": export_device_name(export), "date": export.get("date") or export.get("created")}
    fig.update_yaxes(title_text="speed-up over the default config (x)")
    fig.update_layout(
        title=titled(f"Tuned configs ({export.get('source', 'export')}): best over default", env_line(env)),
        template=TEMPLATE, height=460, margin={"t": 110, "b": 140},
    )  # fmt: skip
    return fig
