"""A ``deltalab tune`` run: the studies of every (variant, shape), one after the other, on one device.

Several workers (one per GPU: ``--device cuda:N``, same ``--storage``) run the same list in the same
order and share each study's work through the storage.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from deltalab.variants import registry
from deltalab.variants.registry import Problem

from .precompile import Precompiler
from .space import paper_shapes
from .study import StudyOutcome, StudyRunner, TuneSettings

PAPER_TOKENS = 16384
PAPER_HIDDEN = 2048
PAPER_LENGTHS = [512, 1024, 2048, 4096, 8192, 16384]
PAPER_HEAD_DIMS = [64, 128, 256]
CPU_SHAPES = [{"B": 1, "T": 64, "H": 2, "K": 16, "V": 16, "block_size": 16}]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype: expected one of {', '.join(DTYPES)}, got {name!r}") from None


def default_shapes(device_type: str) -> list[dict]:
    """The paper's grid on a GPU (B*T = 16384, H*D = 2048, T 512..16K, D 64/128/256); one tiny shape on CPU."""
    if device_type == "cuda":
        return paper_shapes(PAPER_TOKENS, PAPER_HIDDEN, PAPER_LENGTHS, PAPER_HEAD_DIMS)
    return [dict(s) for s in CPU_SHAPES]


def make_problem(shape: dict, dtype: torch.dtype, device_type: str) -> Problem:
    return Problem(
        B=shape["B"], T=shape["T"], H=shape["H"], K=shape["K"], V=shape["V"], dtype=dtype,
        block_size=shape.get("block_size", shape["K"]), device=device_type,
    )


def default_variants(family: str, device_type: str) -> list[str]:
    """What ``tune`` tunes without --variant: the Triton variants on a GPU (their launch configs are
    what is worth tuning); "torch_chunk" on CPU, where nothing measured would transfer to a GPU."""
    if device_type != "cuda":
        return [v.name for v in registry.variants(family) if v.name == "torch_chunk"]
    return [v.name for v in registry.variants(family) if v.is_triton and v.space_size() > 1]


def run_session(
    variants: list[str],
    shapes: list[dict],
    *,
    dtype: torch.dtype,
    family: str,
    device: str,
    storage,
    settings: TuneSettings,
    jobs: Optional[int] = None,
    on_event: Optional[Callable[[str, dict], None]] = None,
    on_skip: Optional[Callable[[str, dict, str], None]] = None,
    timer=None,
    checker=None,
) -> list[StudyOutcome]:
    """Run the study of every (variant, shape); variants that cannot run a shape are skipped (``on_skip``)."""
    device_type = torch.device(device).type
    if device_type == "cuda":
        torch.cuda.set_device(torch.device(device).index or 0)  # plain "cuda" = device 0
    outcomes = []
    with Precompiler(device, jobs=jobs) as precompiler:
        for name in variants:
            impl = registry.get(name, family)
            for shape in shapes:
                problem = make_problem(shape, dtype, device_type)
                why = impl.unsupported_reason(problem)
                if why is None and settings.mode != "fwd":
                    why = impl.backward_unsupported_reason(problem)
                    why = None if why is None else f"{why} (use --mode fwd)"
                if why is not None:
                    if on_skip:
                        on_skip(name, shape, why)
                    continue
                runner = StudyRunner(
                    name, problem, storage=storage, settings=settings, family=family, device=device,
                    timer=timer, checker=checker, precompiler=precompiler, on_event=on_event,
                )
                outcomes.append(runner.run())
    return outcomes
