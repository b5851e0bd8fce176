"""Per-kernel time breakdown of one call: where a variant (or a peer) spends its time.

``kernel_breakdown`` runs a ``timing.make_runner`` closure a few times under ``torch.profiler`` and sums
the device time of every kernel by name (CUDA kernels, memsets and copies on a GPU; on CPU the
operators' self time, which under Triton's interpreter says little about a GPU). It answers "which
stage is slow?" before anything is changed -- the question the timing harness, which sees one number
per call, cannot.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from deltalab.variants.registry import Problem


@dataclass(frozen=True)
class KernelTime:
    """One kernel (or CPU operator) name: its time per call and how often it ran per call."""

    name: str
    us_per_call: float
    launches_per_call: float
    share: float  # of the call's summed kernel time

    def to_dict(self) -> dict:
        return {"name": self.name, "us_per_call": self.us_per_call, "launches_per_call": self.launches_per_call,
                "share": self.share}


def _short(name: str, width: int = 70) -> str:
    """Kernel names from templates can be long; keep the head and the tail."""
    return name if len(name) <= width else name[: width - 24] + "..." + name[-21:]


def kernel_breakdown(
    fn: Callable[[], object], calls: int = 5, warmup: int = 2, device: Optional[torch.device] = None
) -> list[KernelTime]:
    """Per-name device time of ``fn()``, averaged over ``calls`` profiled calls (after ``warmup`` calls that
    compile and fill caches), longest first. Raises ValueError when ``calls`` < 1."""
    from torch.profiler import ProfilerActivity, profile

    if calls < 1:
        raise ValueError(f"calls: expected at least 1, got {calls}")
    on_gpu = device is not None and torch.device(device).type == "cuda"
    for _ in range(warmup):
        fn()
    if on_gpu:
        torch.cuda.synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        if on_gpu:
            torch.cuda.synchronize(device)
    total_us: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    if on_gpu:
        for event in prof.events():
            if event.device_type == torch.autograd.DeviceType.CUDA:
                total_us[event.name] += event.device_time
                count[event.name] += 1
    else:
        for event in prof.key_averages():
            if event.self_cpu_time_total > 0:
                total_us[event.key] += event.self_cpu_time_total
                count[event.key] += event.count
    overall = sum(total_us.values()) or 1.0
    rows = [
        KernelTime(_short(name), total_us[name] / calls, count[name] / calls, total_us[name] / overall)
        for name in total_us
    ]
    return sorted(rows, key=lambda row: -row.us_per_call)


def profile_variant(variant: str, problem: Problem, mode: str = "fwd", *, config: Optional[dict] = None,
                    family: str = "delta_rule", calls: int = 5, warmup: int = 2) -> list[KernelTime]:
    """``kernel_breakdown`` of ``variant`` (or a peer name) on ``problem`` in ``mode`` ("fwd", "bwd",
    "fwd+bwd"), inputs as the timing harness builds them."""
    from deltalab.harness.timing import _default_device, make_runner

    device = _default_device(problem, None)
    runner = make_runner(variant, problem, config, mode, family=family, device=device)
    return kernel_breakdown(runner, calls=calls, warmup=warmup, device=device)


def breakdown_table(rows: list[KernelTime], title: str, top: int = 12):
    """A rich table of the ``top`` longest kernels plus the call's total."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("kernel")
    table.add_column("us / call", justify="right")
    table.add_column("launches", justify="right")
    table.add_column("share", justify="right")
    for row in rows[:top]:
        table.add_row(row.name, f"{row.us_per_call:.1f}", f"{row.launches_per_call:g}", f"{row.share:.0%}")
    if len(rows) > top:
        rest = rows[top:]
        table.add_row(f"({len(rest)} more)", f"{sum(r.us_per_call for r in rest):.1f}",
                      f"{sum(r.launches_per_call for r in rest):g}", f"{sum(r.share for r in rest):.0%}")
    table.add_row("[bold]total[/]", f"[bold]{sum(r.us_per_call for r in rows):.1f}[/]",
                  f"{sum(r.launches_per_call for r in rows):g}", "100%")
    return table
