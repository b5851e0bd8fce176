"""Ours against the peer: the ratio table of the performance targets (`deltalab compare`).

For each pair (our variant, the peer's counterpart) and each shape, mode and dtype measured in the same
sweep, ratio = peer median / our median (above 1: ours is faster). Per (variant, mode, dtype): the
geometric mean and the worst ratio over shapes, checked against the targets below (the performance
issue's: chunk forward >= 1.5x with no shape slower, chunk forward+backward >= 1.3x with no shape
slower, recurrent forward >= 2x).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import pandas as pd
from rich.console import Console
from rich.table import Table

from .tables import number, speedup_text

PAIRS: tuple[tuple[str, str], ...] = (("chunk", "fla_chunk"), ("recurrent", "fla_recurrent"))
SHAPE = ["dtype", "B", "T", "H", "K", "V"]


@dataclass(frozen=True)
class Target:
    """Geometric-mean ratio to reach and whether every shape must be at least as fast as the peer."""

    geomean: float
    no_shape_slower: bool


# A row whose host time per call (either side's) reaches this share of its GPU time measures how fast the host
# issues calls as much as the kernels: on a lent H200 the host's speed differed about 2x between processes,
# and rows under ~0.7 ms read up to 1.7x slower in the slow one (reports/h200-2026-11-29-s8/).
HOST_BOUND_SHARE = 0.9

TARGETS: dict[tuple[str, str], Target] = {
    ("chunk", "fwd"): Target(1.5, True),
    ("chunk", "fwd+bwd"): Target(1.3, True),
    ("recurrent", "fwd"): Target(2.0, False),
}


def ratio_rows(ok: pd.DataFrame, pairs=PAIRS) -> pd.DataFrame:
    """One row per (pair, mode, shape) measured for both sides: ours_ms, peer_ms, ratio, floor_ratio,
    host_share and peer_host_share (host time to issue a call / median GPU time; NaN where not recorded),
    host_bound (either share at least HOST_BOUND_SHARE), timing and peer_timing (how each side was timed:
    "cuda_events", "cuda_graph", ...; "" where not recorded) and mixed_timing (both recorded, and they differ:
    one side's host launches counted, the other's not -- ``--cuda-graph auto`` decides per call)."""
    rows = []
    for ours, peer in pairs:
        mine = ok[ok["variant"] == ours]
        theirs = ok[ok["variant"] == peer]
        if mine.empty or theirs.empty:
            continue
        merged = mine.merge(theirs, on=["mode", *SHAPE], suffixes=("", "_peer"))
        for _, r in merged.iterrows():
            host_share = _host_share(r.get("host_ms"), r["median_ms"])
            peer_host_share = _host_share(r.get("host_ms_peer"), r["median_ms_peer"])
            timing, peer_timing = _timing(r.get("timing_method")), _timing(r.get("timing_method_peer"))
            rows.append(
                {
                    "variant": ours,
                    "peer": peer,
                    "mode": r["mode"],
                    **{k: r[k] for k in SHAPE},
                    "ours_ms": float(r["median_ms"]),
                    "peer_ms": float(r["median_ms_peer"]),
                    "ratio": float(r["median_ms_peer"]) / float(r["median_ms"]),
                    "floor_ratio": float(r.get("floor_ratio", float("nan"))),
                    "host_share": host_share,
                    "peer_host_share": peer_host_share,
                    # NaN (not recorded) compares False: such a row is not judged
                    "host_bound": host_share >= HOST_BOUND_SHARE or peer_host_share >= HOST_BOUND_SHARE,
                    "timing": timing,
                    "peer_timing": peer_timing,
                    "mixed_timing": bool(timing and peer_timing and timing != peer_timing),
                }
            )
    return pd.DataFrame(rows)


def _timing(method) -> str:
    return "" if method is None or pd.isna(method) else str(method)


def _host_share(host_ms, median_ms) -> float:
    if host_ms is None or pd.isna(host_ms) or not median_ms:
        return float("nan")
    return float(host_ms) / float(median_ms)


def summarise(ratios: pd.DataFrame) -> pd.DataFrame:
    """Per (variant, mode, dtype): shapes, geometric mean and worst ratio, the target and whether it is met."""
    rows = []
    if ratios.empty:
        return pd.DataFrame(rows)
    for (variant, mode, dtype), group in ratios.groupby(["variant", "mode", "dtype"], sort=True):
        geomean = math.exp(sum(math.log(x) for x in group["ratio"]) / len(group))
        worst = float(group["ratio"].min())
        target = TARGETS.get((variant, mode))
        met: Optional[bool] = None
        if target is not None:
            met = geomean >= target.geomean and (worst >= 1.0 or not target.no_shape_slower)
        rows.append(
            {
                "variant": variant,
                "mode": mode,
                "dtype": dtype,
                "shapes": len(group),
                "geomean": geomean,
                "worst": worst,
                "target": None if target is None else target.geomean,
                "met": met,
            }
        )
    return pd.DataFrame(rows)


def print_comparison(console: Console, ratios: pd.DataFrame, summary: pd.DataFrame, caption: str = "") -> None:
    """The per-shape ratio table (``ratio_rows``' columns) and the summary against the targets."""
    if ratios.empty:
        console.print("[yellow]no shape was measured for both one of ours and its peer (fla_chunk, fla_recurrent)[/]")
        return
    table = Table(title="peer time / our time (above 1: ours is faster)", caption=caption or None)
    # "host": our host time per call as a share of our GPU time -- near 100 % the GPU waits for the host
    for col in ("variant", "mode", "dtype", "B x T", "H", "K", "V", "ours ms", "peer ms", "ratio", "x floor", "host"):
        table.add_column(col, justify="right" if col not in ("variant", "mode", "dtype") else "left")
    for _, r in ratios.sort_values(["variant", "mode", "K", "T"]).iterrows():
        table.add_row(
            r["variant"], r["mode"], str(r["dtype"]), f"{r['B']} x {r['T']}", str(r["H"]), str(r["K"]), str(r["V"]),
            number(r["ours_ms"]), number(r["peer_ms"]), speedup_text(r["ratio"]),
            "-" if math.isnan(r["floor_ratio"]) else f"{r['floor_ratio']:.1f}",
            "-" if math.isnan(r["host_share"]) else f"{100 * r['host_share']:.0f} %",
        )  # fmt: skip
    console.print(table)
    bound = ratios[ratios["host_bound"]]
    if not bound.empty:
        console.print(
            f"[yellow]{len(bound)} of {len(ratios)} rows are host-bound (ours or the peer's host time per call >= "
            f"{100 * HOST_BOUND_SHARE:.0f} % of its GPU time): their ratios measure how fast this machine's host "
            "issues calls as much as the kernels; `deltalab sweep --cuda-graph on` times the kernels alone.[/]"
        )
    if set(ratios["timing"]) | set(ratios["peer_timing"]) == {"cuda_graph"}:
        console.print("Every row was timed as CUDA-graph replays on both sides: kernel time, no host launches.")
    mixed = ratios[ratios["mixed_timing"]]
    if not mixed.empty:
        console.print(
            f"[yellow]{len(mixed)} of {len(ratios)} rows were timed differently on the two sides (one as CUDA-graph "
            "replays, the other with its host launches): not like for like -- sweep with `--cuda-graph on` or "
            "`off` rather than `auto`.[/]"
        )
    totals = Table(title="geometric mean over shapes, against the targets")
    for col in ("variant", "mode", "dtype", "shapes", "geomean", "worst", "target", "met"):
        totals.add_column(col)
    for _, r in summary.iterrows():
        met = "-" if r["met"] is None else ("[green]yes[/]" if r["met"] else "[red]no[/]")
        target = "-" if r["target"] is None or (isinstance(r["target"], float) and math.isnan(r["target"])) else f">= {r['target']:.1f}x"
        totals.add_row(
            r["variant"], r["mode"], str(r["dtype"]), str(r["shapes"]), speedup_text(r["geomean"]),
            speedup_text(r["worst"]), target, met,
        )  # fmt: skip
    console.print(totals)
