"""Throughput sweeps: time variants (and peers) over a grid of shapes, modes and dtypes; write the results.

A sweep runs every (shape, dtype, variant, mode) of its grid through ``harness.timing`` and writes one
row per combination (schema: ``RESULT_COLUMNS``) to an output folder:

    results.csv       every row without the raw samples
    results.json      every row with ``samples_ms`` (a JSON list of row objects)
    environment.json  ``harness.env.environment()`` of the run
    ceilings.json     ``harness.roofline.measure_ceilings()`` of the run (empty when not measured)

A shape a variant cannot run is recorded as status "skipped" with the variant's own reason; an
exception (a compile error, out of memory) as "failed" with its text -- it never aborts the sweep.

Grids: ``paper_grid`` is the paper's speed-up setting (B*T = 16384 tokens, H*D = 2048, T from 512 to
16K, D in 64/128/256) plus T = 64K at D = 128; ``cpu_grid`` is a tiny one for Triton's interpreter.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import pandas as pd
import torch

from deltalab.harness import peers as peer_mod
from deltalab.harness.numerics import dtype_name
from deltalab.harness.timing import MODES, Timing
from deltalab.variants.registry import Cost, Problem

# The row schema shared with the tuner, regress and reports (samples_ms is kept in JSON only), then
# this harness's additions at the end.
RESULT_COLUMNS = (
    "variant", "family", "mode", "dtype", "B", "T", "H", "K", "V", "block_size", "config", "status",
    "reason", "median_ms", "mean_ms", "std_ms", "min_ms", "cv", "n_samples", "samples_ms", "tokens_per_s",
    "tflops", "gbps", "floor_ms", "floor_ratio", "gpu", "torch", "triton", "deltalab", "git_commit", "date",
)  # fmt: skip
EXTRA_COLUMNS = ("peer", "timing_method", "device", "host_ms")
ENV_FIELDS = ("gpu", "torch", "triton", "deltalab", "git_commit", "date")

PAPER_SEQ_LENS = (512, 1024, 2048, 4096, 8192, 16384)
PAPER_HEAD_DIMS = (64, 128, 256)
PAPER_TOKENS = 16384
PAPER_HD = 2048

# Triton's interpreter runs a kernel's programs one after another in numpy, milliseconds per token
# step of the recurrence: the CPU grid stays tiny so that `deltalab sweep` ends well within a minute.
CPU_SEQ_LENS = (16, 32, 64)
CPU_HEAD_DIMS = (16, 32)
CPU_TOKENS = 64
CPU_HD = 16  # H = 1 at both head dims (H is at least 1)


@dataclass(frozen=True)
class Shape:
    """One sweep shape; ``block_size`` only for the block-diagonal family (None: equal to K)."""

    B: int
    T: int
    H: int
    K: int
    V: int
    block_size: Optional[int] = None

    def problem(self, dtype: torch.dtype, device: str) -> Problem:
        return Problem(B=self.B, T=self.T, H=self.H, K=self.K, V=self.V, dtype=dtype, block_size=self.block_size, device=device)


def grid(
    seq_lens: Iterable[int],
    head_dims: Iterable[int],
    *,
    tokens: int,
    hd: int,
    block_size: Optional[int] = None,
    value_dim: Optional[int] = None,
    heads: Optional[int] = None,
) -> list[Shape]:
    """Shapes at fixed total tokens and H*D: for each head dim D (K = V = D) and length T,
    B = max(1, tokens // T) and H = max(1, hd // D). ``block_size`` (block-diagonal family) must
    divide every D. ``value_dim`` and ``heads`` fix V and H instead (e.g. the block-diagonal scaling
    table: K grows at fixed V and H)."""
    shapes = []
    for D in head_dims:
        if block_size is not None and D % block_size:
            raise ValueError(f"block_size: {block_size} does not divide the head dim D={D}")
        for T in seq_lens:
            H = heads or max(1, hd // D)
            shapes.append(Shape(B=max(1, tokens // T), T=T, H=H, K=D, V=value_dim or D, block_size=block_size))
    return shapes


def paper_grid(tokens: int = PAPER_TOKENS, hd: int = PAPER_HD, *, long_sequence: bool = True) -> list[Shape]:
    """The paper's speed-up grid (T in 512..16K, D in 64/128/256 at B*T = 16384, H*D = 2048) plus,
    with ``long_sequence``, T = 64K at D = 128 (B = 1, H = 16)."""
    shapes = grid(PAPER_SEQ_LENS, PAPER_HEAD_DIMS, tokens=tokens, hd=hd)
    if long_sequence:
        shapes.append(Shape(B=1, T=65536, H=16, K=128, V=128))
    return shapes


def quick_grid(on_gpu: bool) -> list[Shape]:
    """A reduced grid: T in 1K/4K at D in 64/128 on a GPU; T in 16/32 at D = 16 on CPU."""
    if on_gpu:
        return grid((1024, 4096), (64, 128), tokens=PAPER_TOKENS, hd=PAPER_HD)
    return grid((16, 32), (16,), tokens=CPU_TOKENS, hd=CPU_HD)


def cpu_grid() -> list[Shape]:
    """The interpreter's grid: B*T = 64, T in 16/32/64, D in 16/32 with H = 1."""
    return grid(CPU_SEQ_LENS, CPU_HEAD_DIMS, tokens=CPU_TOKENS, hd=CPU_HD)


def parse_size(text: str) -> int:
    """"512" -> 512, "4K" / "4k" -> 4096, "1M" -> 1048576."""
    match = re.fullmatch(r"\s*(\d+)\s*([kKmM]?)\s*", text)
    if not match:
        raise ValueError(f"expected a size like 512, 4K or 64K, got {text!r}")
    return int(match.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[match.group(2).lower()]


def parse_dtype(name: str) -> torch.dtype:
    """"bf16"/"bfloat16", "fp16"/"float16"/"half", "fp32"/"float32", "fp64"/"float64" -> torch dtype."""
    aliases = {
        "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
        "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
        "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
        "fp64": torch.float64, "float64": torch.float64, "double": torch.float64,
    }  # fmt: skip
    try:
        return aliases[name.strip().lower()]
    except KeyError:
        raise ValueError(f"dtype: unknown dtype {name!r} (use bf16, fp16, fp32 or fp64)") from None


def default_variants(family: str, device: str) -> list[str]:
    """Every registered Triton variant of ``family``, plus "torch_chunk" on CPU (or when no Triton
    variant is registered)."""
    from deltalab.variants import registry

    names = [v.name for v in registry.variants(family) if v.is_triton]
    if (device != "cuda" or not names) and "torch_chunk" in registry.names(family):
        names.append("torch_chunk")
    return names


# ---------------------------------------------------------------------------------------------- rows


def _empty_row(name: str, family: str, mode: str, problem: Problem, env: dict, peer: bool) -> dict:
    row = {col: None for col in RESULT_COLUMNS + EXTRA_COLUMNS}
    row.update(
        variant=name,
        family=family,
        mode=mode,
        dtype=dtype_name(problem.dtype),
        B=problem.B,
        T=problem.T,
        H=problem.H,
        K=problem.K,
        V=problem.V,
        block_size=problem.block_size,
        config="{}",
        peer=peer,
        device=env.get("device"),
        **{k: env.get(k) for k in ENV_FIELDS},
    )
    return row


def _fill_measurement(row: dict, timing: Timing, problem: Problem, cost: Optional[Cost], ceilings: dict) -> None:
    """The timing statistics, throughput, achieved rates and roofline figures of one ok row."""
    from deltalab.harness.roofline import achieved, floor_ms

    row.update(
        status="ok",
        reason="",
        median_ms=timing.median_ms,
        mean_ms=timing.mean_ms,
        std_ms=timing.std_ms,
        min_ms=timing.min_ms,
        cv=timing.cv,
        n_samples=timing.n,
        samples_ms=list(timing.samples_ms),
        timing_method=timing.method,
        host_ms=timing.extra.get("host_ms"),  # CUDA only: the host's time to issue one call
        tokens_per_s=problem.tokens / (timing.median_ms * 1e-3) if timing.median_ms > 0 else None,
    )
    if cost is not None and timing.median_ms > 0:
        row.update(achieved(cost, timing.median_ms))
        if ceilings:
            row["floor_ms"] = floor_ms(cost, ceilings, problem.dtype)
            row["floor_ratio"] = timing.median_ms / row["floor_ms"] if row["floor_ms"] > 0 else None


def _error_text(exc: BaseException, limit: int = 500) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


# The function that times one item: (variant or peer name, problem, full config, mode, family) -> Timing.
Timer = Callable[[str, Problem, dict, str, str], Timing]


@dataclass
class SweepResult:
    """What ``run_sweep`` wrote: the folder, the rows (one dict each), the environment and ceilings."""

    out_dir: Path
    rows: list[dict]
    environment: dict
    ceilings: dict
    interrupted: bool = False
    files: dict = field(default_factory=dict)

    @property
    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=list(RESULT_COLUMNS + EXTRA_COLUMNS))

    def counts(self) -> dict[str, int]:
        """Number of rows per status."""
        out: dict[str, int] = {}
        for row in self.rows:
            out[row["status"]] = out.get(row["status"], 0) + 1
        return out


def _plan_variant(name: str, family: str, problem: Problem, config: Optional[dict], mode: str):
    """(variant, full config, cost, skip reason) for one of our variants; the reason is None when it
    can run. ValueError for a config outside the variant's space (the caller's mistake)."""
    from deltalab.harness.roofline import mode_cost
    from deltalab.variants import registry
    from deltalab.variants.dispatch import tuned_config

    impl = registry.get(name, family)
    reason = impl.unsupported_reason(problem)
    if reason is not None:
        return impl, dict(config or {}), None, reason
    # the config the op would use: the given one over the default, else exported tuning results
    full = impl.full_config(config if config else tuned_config(impl, problem))
    reason = impl.config_reason(full, problem)
    if reason is None and mode != "fwd":
        no_backward = impl.backward_unsupported_reason(problem)
        reason = None if no_backward is None else f"variant {name!r}: {no_backward}"
    cost = mode_cost(impl, problem, full, mode)
    return impl, full, cost, reason


def _default_timer(warmup_ms: float, rep_ms: float, **benchmark_kwargs) -> Timer:
    from deltalab.harness.timing import time_variant

    def timer(name: str, problem: Problem, config: dict, mode: str, family: str) -> Timing:
        return time_variant(name, problem, config or None, mode, family=family, warmup_ms=warmup_ms, rep_ms=rep_ms, **benchmark_kwargs)

    return timer


def default_out_dir() -> Path:
    """out/sweep-<UTC date and time>."""
    return Path("out") / ("sweep-" + _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S"))


def write_results(out_dir: Path, rows: list[dict], environment: dict, ceilings: dict) -> dict:
    """Write results.csv (no samples), results.json (with samples), environment.json and
    ceilings.json into ``out_dir``; returns {name: path}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = list(RESULT_COLUMNS + EXTRA_COLUMNS)
    frame = pd.DataFrame(rows, columns=columns)
    paths = {name: out_dir / name for name in ("results.csv", "results.json", "environment.json", "ceilings.json")}
    frame.drop(columns=["samples_ms"]).to_csv(paths["results.csv"], index=False)
    records = [{col: row.get(col) for col in columns} for row in rows]
    paths["results.json"].write_text(json.dumps(records, indent=1, default=str, allow_nan=True) + "\n")
    paths["environment.json"].write_text(json.dumps(environment, indent=1, default=str) + "\n")
    paths["ceilings.json"].write_text(json.dumps(ceilings, indent=1, default=str) + "\n")
    return paths


def run_sweep(
    out_dir=None,
    *,
    shapes: Sequence[Shape],
    variants: Sequence[str],
    modes: Sequence[str] = ("fwd",),
    dtypes: Sequence[torch.dtype] = (torch.bfloat16,),
    family: str = "delta_rule",
    peers: Sequence[str] = (),
    configs: Optional[dict[str, dict]] = None,
    warmup_ms: float = 25.0,
    rep_ms: float = 100.0,
    device=None,
    measure_roofline: bool = True,
    ceilings: Optional[dict] = None,
    timer: Optional[Timer] = None,
    progress: bool = True,
    console=None,
    **benchmark_kwargs,
) -> SweepResult:
    """Time every (shape, dtype, variant or peer, mode) and write the results to ``out_dir``.

    ``variants``: registered names of ``family``; ``peers``: names from ``harness.peers`` (timed on the
    same inputs; only for the ordinary delta rule). ``configs`` maps a variant name to its config
    (merged over the default); without one the config the op itself would pick is used (exported
    tuning results, else the default) and recorded. ``benchmark_kwargs`` go to
    ``harness.timing.benchmark`` (flush_l2, cuda_graph, min_reps, max_reps). ``timer`` replaces the
    real measurement (tests). Ceilings are measured once unless given (``ceilings``) or
    ``measure_roofline=False``.
    A Ctrl-C stops the sweep after writing the rows measured so far (``interrupted=True``); the files are
    also rewritten after every item, so even a killed sweep leaves its finished rows.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from deltalab.harness.env import environment
    from deltalab.harness.roofline import measure_ceilings

    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"modes: expected some of {MODES}, got {mode!r}")
    for name in peers:
        if not peer_mod.is_peer(name):
            raise ValueError(f"peers: unknown peer {name!r} (known: {', '.join(peer_mod.PEERS)})")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device_type = torch.device(device).type
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir()
    configs = dict(configs or {})
    env = environment(device)
    if ceilings is None:
        ceilings = measure_ceilings(device) if measure_roofline else {}
    timer = timer or _default_timer(warmup_ms, rep_ms, device=device, **benchmark_kwargs)

    items = [
        (shape, dtype, name, mode)
        for shape in shapes
        for dtype in dtypes
        for name in list(variants) + list(peers)
        for mode in modes
    ]
    rows: list[dict] = []
    interrupted = False
    with Progress(
        TextColumn("[bold]sweep[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
        disable=not progress,
        transient=False,
    ) as bar:
        task = bar.add_task("", total=len(items))
        try:
            for shape, dtype, name, mode in items:
                problem = shape.problem(dtype, device_type)
                bar.update(task, description=f"{name} {mode} {problem.describe()}")
                rows.append(_measure_one(name, family, mode, problem, configs.get(name), env, ceilings, timer))
                # after every item: a sweep killed outright (not interrupted) keeps what it measured
                write_results(out_dir, rows, env, ceilings)
                bar.advance(task)
        except KeyboardInterrupt:
            interrupted = True
    files = write_results(out_dir, rows, env, ceilings)
    return SweepResult(out_dir, rows, env, ceilings, interrupted=interrupted, files=files)


def _measure_one(
    name: str, family: str, mode: str, problem: Problem, config: Optional[dict], env: dict, ceilings: dict, timer: Timer
) -> dict:
    """One row: skipped (with the reason), failed (with the exception) or ok (with the timing)."""
    is_peer = peer_mod.is_peer(name)
    row = _empty_row(name, family, mode, problem, env, is_peer)
    try:
        if is_peer:
            full, cost = {}, peer_mod.cost(name, problem, mode)
            reason = peer_mod.unsupported_reason(name, problem, family)
        else:
            _, full, cost, reason = _plan_variant(name, family, problem, config, mode)
        row["config"] = json.dumps(full, sort_keys=True)
        if reason is not None:
            row.update(status="skipped", reason=reason)
            return row
        timing = timer(name, problem, full, mode, family)
        _fill_measurement(row, timing, problem, cost, ceilings)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 -- one failure never aborts the sweep
        row.update(status="failed", reason=_error_text(exc))
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # after an out-of-memory, give the next item its memory back
    return row


# ---------------------------------------------------------------------------------------------- summary


def speedups(frame: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Speed-up of every ok row over ``baseline`` on the same shape, dtype and mode:
    baseline median / row median (> 1: faster than the baseline). Columns: variant, mode, dtype, B,
    T, H, K, V, block_size, median_ms, baseline_ms, speedup."""
    keys = ["mode", "dtype", "B", "T", "H", "K", "V", "block_size"]
    ok = frame[frame["status"] == "ok"]
    base = ok[ok["variant"] == baseline][keys + ["median_ms"]].rename(columns={"median_ms": "baseline_ms"})
    merged = ok[["variant"] + keys + ["median_ms"]].merge(base, on=keys, how="inner")
    merged["speedup"] = merged["baseline_ms"] / merged["median_ms"]
    return merged


def summary_table(frame: pd.DataFrame, baseline: Optional[str], title: str = "sweep summary"):
    """A rich Table: one line per shape x dtype x mode, each variant's median ms and, when a baseline
    is given and measured there, its speed-up over it (green faster, red slower)."""
    from rich.table import Table

    keys = ["dtype", "mode", "B", "T", "H", "K", "V", "block_size"]
    names = list(dict.fromkeys(frame["variant"]))
    table = Table(title=title + (f" (speed-up vs {baseline})" if baseline else ""))
    for col in ("dtype", "mode", "B x T", "H", "K", "V"):
        table.add_column(col, justify="right" if col not in ("dtype", "mode") else "left")
    for name in names:
        table.add_column(name, justify="right")
    for key, group in frame.groupby(keys, sort=False, dropna=False):
        dtype, mode, B, T, H, K, V, _ = key
        by_name = {r["variant"]: r for r in group.to_dict(orient="records")}
        base = by_name.get(baseline) if baseline else None
        base_ms = base["median_ms"] if base is not None and base["status"] == "ok" else None
        cells = []
        for name in names:
            r = by_name.get(name)
            if r is None:
                cells.append("")
            elif r["status"] != "ok":
                cells.append(f"[dim]{r['status']}[/]")
            else:
                text = f"{r['median_ms']:.3f} ms"
                if base_ms and name != baseline and r["median_ms"] > 0:
                    ratio = base_ms / r["median_ms"]
                    color = "green" if ratio >= 1.0 else "red"
                    text += f" [{color}]{ratio:.2f}x[/]"
                cells.append(text)
        table.add_row(str(dtype), str(mode), f"{B} x {T}", str(H), str(K), str(V), *cells)
    return table


def status_table(frame: pd.DataFrame, title: str = "skipped and failed"):
    """A rich Table of the rows that are not ok, with their reasons (None when all are ok)."""
    from rich.markup import escape
    from rich.table import Table

    bad = frame[frame["status"] != "ok"]
    if bad.empty:
        return None
    table = Table(title=title)
    for col in ("variant", "mode", "dtype", "shape", "status", "reason"):
        table.add_column(col, overflow="fold")
    for r in bad.to_dict(orient="records"):
        shape = f"B={r['B']} T={r['T']} H={r['H']} K={r['K']} V={r['V']}"
        color = "red" if r["status"] == "failed" else "yellow"
        table.add_row(r["variant"], r["mode"], r["dtype"], shape, f"[{color}]{r['status']}[/]", escape(str(r["reason"])))
    return table
