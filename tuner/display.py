"""What ``deltalab tune`` shows: a rich progress display while studies run, a summary table at the end."""

from __future__ import annotations

import json
from typing import Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .study import StudyOutcome


def _shape(problem) -> str:
    s = f"{problem.B}x{problem.T}x{problem.H}x{problem.K}"
    if problem.V != problem.K:
        s += f"x{problem.V}"
    if problem.block_size != problem.K:
        s += f"/{problem.block_size}"
    return s


def _config(config: Optional[dict]) -> str:
    if not config:
        return "-"
    return " ".join(f"{k}={v}" for k, v in sorted(config.items()))


class TuneProgress:
    """A rich Progress with one bar per study; ``on_event`` is the StudyRunner callback."""

    def __init__(self, console: Console, enabled: bool = True) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=console,
            disable=not enabled,
        )
        self._tasks: dict[str, int] = {}
        self._best: dict[str, float] = {}
        self._invalid: dict[str, int] = {}

    def __enter__(self) -> "TuneProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def on_event(self, kind: str, info: dict) -> None:
        study = info["study"]
        if kind == "start":
            label = f"{info['variant']} {_shape(info['problem'])} [{info['strategy']}]"
            self._tasks[study] = self.progress.add_task(label, total=info["budget"], completed=info["done"], status="")
            return
        task = self._tasks.get(study)
        if task is None:
            return
        if kind == "trial":
            if info["status"] == "ok":
                self._best[study] = min(self._best.get(study, float("inf")), info["value"])
            elif info["status"] == "invalid":
                self._invalid[study] = self._invalid.get(study, 0) + 1
        elif kind == "progress":
            self.progress.update(task, completed=info["done"], total=info["budget"])
        elif kind == "waiting":
            self.progress.update(task, status=f"waiting for {info['running']} trial(s) of other workers")
            return
        elif kind == "select":
            self.progress.update(task, status=f"re-timing {info['candidates']} configs x {info['rounds']} rounds")
            return
        elif kind == "selected":
            speedup = info.get("speedup")
            extra = f" ({speedup:.2f}x default)" if speedup else ""
            self.progress.update(task, status=f"winner {info['value']:.4g} ms{extra}")
            return
        best = self._best.get(study)
        status = f"best {best:.4g} ms" if best is not None else "no valid config yet"
        if self._invalid.get(study):
            status += f", {self._invalid[study]} invalid"
        self.progress.update(task, status=status)


def summary_table(outcomes: list[StudyOutcome], title: str = "tuning: best versus default") -> Table:
    """One row per study: shape, default and winner times, speed-up, winner config, trial counts."""
    table = Table(title=title)
    for col in ("variant", "shape", "dtype", "mode", "strategy", "default ms", "best ms", "speed-up", "best config",
                "ok / invalid / dup"):
        table.add_column(col, justify="right" if col.endswith(("ms", "up")) else "left")
    for o in outcomes:
        default_ms = o.selection.default_median_ms if o.selection and o.selection.default_median_ms else o.default_ms
        speedup = o.speedup
        table.add_row(
            o.variant,
            _shape(o.problem),
            str(o.problem.dtype).replace("torch.", ""),
            o.mode,
            o.strategy,
            f"{default_ms:.4g}" if default_ms else "-",
            f"{o.winner_ms:.4g}" if o.winner_ms else "-",
            f"{speedup:.2f}x" if speedup else "-",
            _config(o.winner),
            f"{o.counts.get('ok', 0)} / {o.counts.get('invalid', 0)} / {o.counts.get('duplicate', 0)}",
        )
    return table


def invalid_table(outcomes: list[StudyOutcome]) -> Optional[Table]:
    """Why configs were rejected, per study (None when none were)."""
    rows = [(o, stage, n) for o in outcomes for stage, n in sorted(o.invalid_stages.items())]
    if not rows:
        return None
    table = Table(title="invalid configs by stage")
    for col in ("variant", "shape", "stage", "count"):
        table.add_column(col)
    for o, stage, n in rows:
        table.add_row(o.variant, _shape(o.problem), stage, str(n))
    return table


def entries_table(files) -> Table:
    """The entries ``deltalab export`` wrote."""
    table = Table(title="exported configs")
    for col in ("file", "variant", "dtype", "K", "V", "T bucket", "mode", "config", "ms", "vs default"):
        table.add_column(col)
    for f in files:
        for e in f.entries:
            speedup = e.get("speedup_vs_default")
            table.add_row(
                f.path.name, e["variant"], e["dtype"], str(e["K"]), str(e["V"]), str(e["T_bucket"]), e.get("mode", ""),
                _config(e["config"]), f"{e['median_ms']:.4g}", f"{speedup:.2f}x" if speedup else "-",
            )
    return table


def to_json(outcomes: list[StudyOutcome]) -> str:
    """The outcomes as JSON (for --json)."""
    rows = []
    for o in outcomes:
        rows.append({
            "study": o.study_name, "variant": o.variant, "family": o.family, "mode": o.mode, "strategy": o.strategy,
            "B": o.problem.B, "T": o.problem.T, "H": o.problem.H, "K": o.problem.K, "V": o.problem.V,
            "block_size": o.problem.block_size, "dtype": str(o.problem.dtype).replace("torch.", ""),
            "winner": o.winner, "winner_ms": o.winner_ms, "default_ms": o.default_ms, "speedup": o.speedup,
            "counts": o.counts, "invalid_stages": o.invalid_stages,
            "selection": o.selection.to_dict() if o.selection else None,
        })
    return json.dumps(rows, indent=1)
