"""Choosing the implementation and config of a call: ``variant="auto"`` and ``config=None``.

The rule, in order:
1. An explicit variant name is used as given; otherwise ("auto") the fastest variant that exported
   tuning results name for this device and shape, when such results exist and also timed the variant
   rule 2 would pick there (results that never measured it cannot say another one beats it).
2. Without tuning results ("auto"): on CUDA, "recurrent" for short sequences (mean length <= 64 tokens
   per sequence: decoding and tiny prompts, where chunking buys nothing) or when chunk's backward refuses
   the problem (a registry ``backward_limit``; none at present) and "chunk" otherwise; on CPU,
   "torch_chunk". If the preferred variant cannot run the problem, the first of the fallback order
   (chunk, recurrent, torch_chunk, reference) that can.
3. ``config=None``: the exported best config for (device, variant, dtype, K, V, sequence length) when one
   exists, else the variant's default. A given (possibly partial) config is merged over the default.

``grad``: whether the call will be differentiated (the op passes grad mode and requires_grad of its
inputs). Exported results measured the way the call runs come first: forward+backward for training,
forward alone for inference (``tuned.MODE_PREFERENCE``); a training call's forward and its backward
resolve the same config.
"""

from __future__ import annotations

from typing import Optional

from . import registry
from .registry import Config, Problem, Variant

SHORT_SEQUENCE = 64
FALLBACK_ORDER = ("chunk", "recurrent", "torch_chunk", "reference")


def rule_variant(problem: Problem, family: str) -> str:
    """The documented rule for ``variant="auto"`` (used when no tuning results cover the problem)."""
    available = {v.name: v for v in registry.variants(family)}
    if problem.device == "cuda":
        mean_len = problem.tokens / max(problem.num_seqs, 1)
        # a chunk whose backward refuses the problem (a registry backward_limit) would break training
        chunk = available.get("chunk")
        chunk_cannot_train = chunk is not None and chunk.backward_unsupported_reason(problem) is not None
        preferred = "recurrent" if mean_len <= SHORT_SEQUENCE or chunk_cannot_train else "chunk"
    else:
        preferred = "torch_chunk"
    for name in (preferred, *FALLBACK_ORDER):
        variant = available.get(name)
        if variant is not None and variant.unsupported_reason(problem) is None:
            return name
    for variant in available.values():
        if variant.unsupported_reason(problem) is None:
            return variant.name
    raise ValueError(f"variant: no registered {family} variant supports {problem.describe()} on {problem.device}")


def tuned_variant(problem: Problem, family: str, rule_choice: str, grad: bool = True) -> Optional[str]:
    """The fastest variant named by exported tuning results for ``problem``, when they also measured
    ``rule_choice`` there (None otherwise, or without results)."""
    from . import tuned

    return tuned.best_variant(problem, family, incumbent=rule_choice, grad=grad)


def tuned_config(variant: Variant, problem: Problem, grad: bool = True) -> Optional[Config]:
    from . import tuned

    return tuned.lookup_config(variant, problem, grad=grad)


def resolve(family: str, name: str, config: Optional[Config], problem: Problem,
            grad: bool = True) -> tuple[Variant, Config]:
    """The variant and full config to run ``problem`` with (``grad``: the call will be differentiated);
    clear errors when it cannot run."""
    if name == "auto":
        rule_choice = rule_variant(problem, family)
        name = tuned_variant(problem, family, rule_choice, grad) or rule_choice
    variant = registry.get(name, family)
    reason = variant.unsupported_reason(problem)
    if reason is not None:
        others = [n for n in registry.supporting(problem, family) if n != name]
        raise ValueError(
            f"variant: {name!r} cannot run {problem.describe()} on {problem.device}: {reason}"
            f" (variants that can: {', '.join(others) or 'none'})"
        )
    # a given config is merged over the variant's default; tuned configs apply only when none is given
    full = variant.full_config(config if config else tuned_config(variant, problem, grad))
    why = variant.config_reason(full, problem)
    if why is not None:
        raise ValueError(f"config: {full} cannot run {problem.describe()} with variant {name!r}: {why}")
    return variant, full
