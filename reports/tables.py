"""Terminal summaries of a report's numbers as rich tables.

* ``timing_table``   -- median ms of every variant on every shape of one (family, mode, dtype), with its
  speed-up over the baseline variant: green when faster than the baseline, red when slower.
* ``speedup_table``  -- the numbers of the speed-up figure: numerator over baseline, T x head dim.
* ``floor_table``    -- per variant and mode, how far the measured times are from the roofline floor.
* ``not_ok_table``   -- skipped and failed cases with their reasons.
* ``print_tables``   -- all of them for a ``Results``, on a console.
"""

from __future__ import annotations

from typing import Optional

import pandas as pd
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .figures import KNOWN_ORDER, MODE_NAMES, _ordered_modes, resolve_baseline, seq_label, speedup_pairs, speedups
from .load import Results

SHAPE_KEY = ["family", "mode", "dtype", "B", "T", "H", "K", "V", "block_size", "gpu"]


def number(value: float) -> str:
    """A compact number: 3 significant digits below 100 (CPU runs give tiny rates), integers above."""
    if value != value:
        return "-"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def speedup_text(speedup: float) -> Text:
    """'12.34x' in green when > 1 (faster than the baseline), red when < 1 (slower), plain at exactly 1."""
    if speedup != speedup:  # NaN: no baseline for this shape
        return Text("-", style="dim")
    style = "green" if speedup > 1 else "red" if speedup < 1 else ""
    return Text(f"{speedup:.2f}x", style=style)


def _label_order(labels) -> list[str]:
    def key(label: str):
        base = label.split(" (")[0]
        return (KNOWN_ORDER.index(base) if base in KNOWN_ORDER else len(KNOWN_ORDER), label)

    return sorted(set(labels), key=key)


def _shape_text(row) -> list[str]:
    head = row["head_dim"] if row["block_size"] == row["K"] else f"{row['head_dim']}/{row['block_size']}"
    return [head, seq_label(row["T"]), str(int(row["B"])), str(int(row["H"]))]


def timing_table(ok: pd.DataFrame, mode: str, family: str, dtype: str, baseline: str) -> Optional[Table]:
    """Median ms per shape (rows) and variant (columns), each with its speed-up over ``baseline``."""
    rows = ok[(ok["mode"] == mode) & (ok["family"] == family) & (ok["dtype"] == dtype)]
    if rows.empty:
        return None
    rows = rows.assign(gpu=rows["gpu"].fillna("unknown GPU"))
    base = rows[rows["variant"] == baseline][SHAPE_KEY + ["median_ms"]].drop_duplicates(SHAPE_KEY, keep="last")
    rows = rows.merge(base.rename(columns={"median_ms": "baseline_ms"}), on=SHAPE_KEY, how="left")
    labels = _label_order(rows["label"])
    has_baseline = rows["baseline_ms"].notna().any()
    title = f"{MODE_NAMES.get(mode, mode)}, {dtype}, {family}: median ms"
    title += f" and speed-up over {baseline}" if has_baseline else f" (no {baseline!r} rows: no speed-ups)"
    table = Table(title=title, title_justify="left")
    for column in ("D", "T", "B", "H"):
        table.add_column(column, justify="right")
    for label in labels:
        table.add_column(label, justify="right")
    shape_columns = ["gpu", "K", "V", "block_size", "T", "B", "H"]
    shapes = rows.drop_duplicates(shape_columns).sort_values(shape_columns[1:] + ["gpu"])
    for _, shape in shapes.iterrows():
        here = rows[(rows[shape_columns] == shape[shape_columns]).all(axis=1)]
        cells: list = _shape_text(shape)
        for label in labels:
            match = here[here["label"] == label]
            if match.empty:
                cells.append(Text("-", style="dim"))
                continue
            row = match.iloc[-1]
            cell = Text(f"{row['median_ms']:.3f}")
            if has_baseline and row["variant"] != baseline:
                cell.append(" ")
                cell.append_text(speedup_text(row["baseline_ms"] / row["median_ms"]))
            cells.append(cell)
        table.add_row(*cells)
    return table


def speedup_table(ok: pd.DataFrame, numerator: str = "chunk", baseline: str = "recurrent") -> list[Table]:
    """The speed-up figure's numbers: one table per pair and mode, T (rows) x head dim (columns)."""
    tables: list[Table] = []
    for num, den in speedup_pairs(ok, numerator, baseline):
        data = speedups(ok, num, den)
        for mode in _ordered_modes(data["mode"]):
            for dtype in sorted(data["dtype"].unique()):
                here = data[(data["mode"] == mode) & (data["dtype"] == dtype)]
                if here.empty:
                    continue
                heads = list(dict.fromkeys(here.sort_values(["K", "V"])["head_dim"]))
                title = f"speed-up of {num} over {den}, {MODE_NAMES.get(mode, mode)}, {dtype}"
                table = Table(title=title, title_justify="left", min_width=len(title))
                table.add_column("T", justify="right")
                for head in heads:
                    table.add_column(f"D={head}", justify="right")
                for T in sorted(here["T"].unique()):
                    cells: list = [seq_label(T)]
                    for head in heads:
                        match = here[(here["T"] == T) & (here["head_dim"] == head)]
                        cells.append(speedup_text(match["speedup"].iloc[-1]) if len(match) else Text("-", style="dim"))
                    table.add_row(*cells)
                tables.append(table)
    return tables


def floor_table(ok: pd.DataFrame) -> Optional[Table]:
    """Per variant and mode: the measured time's distance from the roofline floor (best, median, worst
    ratio over shapes) and the best achieved TFLOP/s and GB/s."""
    rows = ok[ok["floor_ratio"] > 0]
    if rows.empty:
        return None
    table = Table(title="distance from the roofline floor (median ms / floor ms over shapes)", title_justify="left")
    columns = ("variant", "mode", "dtype", "shapes", "best x floor", "median x floor", "worst x floor", "best TFLOP/s",
               "best GB/s")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column in ("variant", "mode", "dtype") else "right")
    order = {label: i for i, label in enumerate(_label_order(rows["label"]))}
    modes = _ordered_modes(rows["mode"])
    groups = sorted(rows.groupby(["label", "mode", "dtype"]), key=lambda g: (order[g[0][0]], modes.index(g[0][1]), g[0][2]))
    for (label, mode, dtype), group in groups:
        ratio = group["floor_ratio"]
        table.add_row(
            label, mode, dtype, str(len(group)), number(ratio.min()), number(ratio.median()), number(ratio.max()),
            number(group["tflops"].max()), number(group["gbps"].max()),
        )  # fmt: skip
    return table


def not_ok_table(not_ok: pd.DataFrame) -> Optional[Table]:
    """Skipped and failed cases, each with its reason."""
    if not_ok.empty:
        return None
    table = Table(title=f"skipped / failed cases ({len(not_ok)})", title_justify="left")
    for column in ("variant", "mode", "dtype", "D", "T", "B", "H", "status", "reason"):
        table.add_column(column, justify="right" if column in ("D", "T", "B", "H") else "left")
    for _, row in not_ok.sort_values(["status", "variant", "mode", "K", "T"]).iterrows():
        style = "red" if row["status"] == "failed" else "yellow"
        table.add_row(
            row["label"], row["mode"], row["dtype"], *_shape_text(row), Text(row["status"], style=style), str(row["reason"])
        )
    return table


def print_tables(
    results: Results, console: Optional[Console] = None, *, numerator: str = "chunk", baseline: str = "recurrent"
) -> None:
    """Every table of a report on ``console``: speed-ups, timings per mode, floor distance, not-ok cases."""
    console = console or Console()
    ok = results.ok
    if results.synthetic:
        console.print(Text("SYNTHETIC sample results: not measurements.", style="bold yellow"))
    if results.interpreted:
        console.print(Text("CPU run under Triton's interpreter: these times say nothing about GPU speed.", style="bold yellow"))
    for table in speedup_table(ok, numerator, baseline):
        console.print(table)
    timing_baseline = resolve_baseline(ok, baseline)
    for family in sorted(ok["family"].unique(), key=lambda f: (f != "delta_rule", f)):
        for mode in _ordered_modes(ok[ok["family"] == family]["mode"]):
            for dtype in sorted(ok["dtype"].unique()):
                table = timing_table(ok, mode, family, dtype, timing_baseline)
                if table is not None:
                    console.print(table)
    for table in (floor_table(ok), not_ok_table(results.not_ok)):
        if table is not None:
            console.print(table)
    for note in results.notes:
        console.print(Text(note, style="dim"))
