"""The ``deltalab`` command line (typer + rich). Each command's work lives in its own module; the
commands here only parse options and print.

Without a CUDA GPU the Triton variants run under Triton's CPU interpreter: ``main`` sets
TRITON_INTERPRET=1 before any kernel module is imported, and commands say so.
"""

from __future__ import annotations

import os

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="deltalab: delta-rule kernels -- variants, numerics checks, timing sweeps, tuning, reports.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()


@app.callback()
def _root() -> None:
    """deltalab: delta-rule kernels -- variants, numerics checks, timing sweeps, tuning, reports."""


def use_interpreter_without_gpu() -> bool:
    """Run Triton kernels under the interpreter when there is no CUDA device; True if it does."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    return os.environ.get("TRITON_INTERPRET") == "1"


@app.command("variants")
def variants_command(family: str = typer.Option("delta_rule", help="delta_rule or block_diag")) -> None:
    """List the registered variants, what they support and their tunable space."""
    from deltalab.variants import registry

    table = Table(title=f"registered {family} variants")
    for col in ("name", "devices", "dtypes", "head dims", "varlen", "backward", "space (size)", "description"):
        table.add_column(col)
    for v in registry.variants(family):
        dtypes = ", ".join(str(d).replace("torch.", "") for d in v.dtypes)
        space = ", ".join(f"{k}" for k in v.space) or "-"
        table.add_row(
            v.name,
            ", ".join(v.devices),
            dtypes,
            f"{v.min_head_dim}-{v.max_head_dim}",
            "yes" if v.varlen else "no",
            "yes" if v.supports_backward else "no",
            f"{space} ({v.space_size()})",
            v.description,
        )
    console.print(table)


def main() -> None:
    use_interpreter_without_gpu()
    app()


if __name__ == "__main__":
    main()
