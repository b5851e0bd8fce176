"""Numerics: fresh random inputs, relative errors and per-dtype tolerances against the float64 reference.

Every check draws fresh random inputs (never zeros; keys L2-normalised), compares with variant
"reference" run on float64 copies of the same inputs, and measures the relative Frobenius error
||x - ref|| / ||ref||. NaN or Inf anywhere is an infinite error and always fails.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Iterator, Optional

import torch
import torch.nn.functional as F

from deltalab.variants.registry import Problem

# (forward, gradients): relative Frobenius error allowed against the float64 reference.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-9),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (5e-3, 1e-2),
    torch.bfloat16: (1e-2, 2e-2),
}


def tolerance(dtype: torch.dtype, gradient: bool = False) -> float:
    """The allowed relative error for ``dtype`` (forward outputs, or gradients)."""
    return TOLERANCES[dtype][1 if gradient else 0]


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; inf when ``out`` holds NaN/Inf or the shapes differ."""
    if out.shape != ref.shape:
        return float("inf")
    out64 = out.detach().to(torch.float64)
    ref64 = ref.detach().to(device=out64.device, dtype=torch.float64)
    if not torch.isfinite(out64).all():
        return float("inf")
    denom = ref64.norm().item()
    diff = (out64 - ref64).norm().item()
    return diff / denom if denom > 0 else diff


@dataclass
class Inputs:
    """One call's arguments. ``num_blocks`` > 1 only for block-diagonal problems with per-block beta."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    beta: torch.Tensor
    initial_state: Optional[torch.Tensor]
    cu_seqlens: Optional[torch.Tensor]

    def tensors(self) -> list[torch.Tensor]:
        extra = [] if self.initial_state is None else [self.initial_state]
        return [self.q, self.k, self.v, self.beta, *extra]

    def to(self, dtype: Optional[torch.dtype] = None, device=None) -> "Inputs":
        """A detached copy; q, k, v, beta in ``dtype``, the state in float64 when dtype is float64."""

        def conv(x, state=False):
            if x is None:
                return None
            dt = dtype if not state or dtype == torch.float64 else torch.float32
            return x.detach().to(device=device or x.device, dtype=dt or x.dtype).clone()

        return Inputs(
            conv(self.q),
            conv(self.k),
            conv(self.v),
            conv(self.beta),
            conv(self.initial_state, state=True),
            None if self.cu_seqlens is None else self.cu_seqlens.to(device or self.cu_seqlens.device),
        )


def random_cu_seqlens(total: int, num_seqs: int, generator: torch.Generator) -> torch.Tensor:
    """Offsets of ``num_seqs`` packed sequences of random (positive) lengths summing to ``total``."""
    if not 1 <= num_seqs <= total:
        raise ValueError(f"num_seqs: need 1 <= num_seqs <= total={total}, got {num_seqs}")
    cuts = torch.randperm(total - 1, generator=generator)[: num_seqs - 1] + 1
    return torch.cat([torch.tensor([0]), cuts.sort().values, torch.tensor([total])]).to(torch.int64)


def random_inputs(
    problem: Problem,
    *,
    seed: int = 0,
    device=None,
    initial_state: bool = True,
    per_block_beta: bool = False,
) -> Inputs:
    """Fresh inputs for ``problem``: q, v ~ N(0, 1); k L2-normalised per head (per key block for the
    block-diagonal family); beta = sigmoid(N(0, 1)) in (0, 1); initial state ~ N(0, 1) float32.

    For a varlen problem (``problem.varlen``), B must be 1 and ``problem.num_seqs`` random-length
    sequences are packed.
    """
    gen = torch.Generator().manual_seed(seed)
    B, T, H, K, V = problem.B, problem.T, problem.H, problem.K, problem.V
    device = device or ("cuda" if problem.device == "cuda" else "cpu")

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    q = randn(B, T, H, K)
    block = problem.block_size
    k = F.normalize(randn(B, T, H, K // block, block), dim=-1).reshape(B, T, H, K)
    v = randn(B, T, H, V)
    nb = K // block
    beta_shape = (B, T, H, nb) if per_block_beta and problem.block_size != problem.K else (B, T, H)
    beta = torch.sigmoid(randn(*beta_shape))
    cu = random_cu_seqlens(T, problem.num_seqs, gen) if problem.varlen else None
    h0 = randn(problem.num_seqs, H, K, V) if initial_state else None
    dt = problem.dtype
    return Inputs(q, k, v, beta, h0, cu).to(dt, device)


# ---------------------------------------------------------------------------------------------- the gate

# The tensors a check compares, in this order: forward outputs, then gradients.
FORWARD_KEYS = ("o", "final_state")
GRADIENT_KEYS = ("dq", "dk", "dv", "dbeta", "dh0")
ERROR_KEYS = FORWARD_KEYS + GRADIENT_KEYS


@dataclass
class CheckResult:
    """The verdict of one numerics check of ``variant`` on ``problem`` with ``config`` (the full config).

    ``errors`` and ``tolerances`` share their keys (among ``ERROR_KEYS``): the relative Frobenius error
    of each compared tensor (inf for NaN/Inf, a shape mismatch or a missing tensor) and the allowed one.
    ``passed`` is True only when every error is within its tolerance; ``reason`` then is "", else it
    says which tensor failed, or the exception a crashing variant raised. ``skipped`` marks a variant
    (or config) that does not support the problem -- not a failure; ``reason`` holds the variant's own
    explanation. ``notes`` holds remarks that do not fail the check (e.g. "no backward").
    """

    variant: str
    family: str
    problem: Problem
    config: dict
    errors: dict[str, float] = field(default_factory=dict)
    tolerances: dict[str, float] = field(default_factory=dict)
    passed: bool = False
    reason: str = ""
    skipped: bool = False
    notes: str = ""

    @property
    def status(self) -> str:
        """"passed", "failed" or "skipped"."""
        return "passed" if self.passed else ("skipped" if self.skipped else "failed")

    def to_row(self) -> dict:
        """A flat, JSON-able dict: names, status, the problem's fields, config (JSON string), and
        ``err_<key>`` / ``tol_<key>`` for every key of ``ERROR_KEYS`` (None where not compared).
        Non-finite errors stay ``inf`` (Python's json writes them as Infinity)."""
        p = self.problem
        row = {
            "variant": self.variant,
            "family": self.family,
            "status": self.status,
            "passed": self.passed,
            "reason": self.reason,
            "notes": self.notes,
            "B": p.B,
            "T": p.T,
            "H": p.H,
            "K": p.K,
            "V": p.V,
            "dtype": dtype_name(p.dtype),
            "num_seqs": p.num_seqs,
            "varlen": p.varlen,
            "block_size": p.block_size,
            "device": p.device,
            "config": json.dumps(self.config, sort_keys=True),
        }
        for key in ERROR_KEYS:
            row[f"err_{key}"] = self.errors.get(key)
            row[f"tol_{key}"] = self.tolerances.get(key)
        return row


def dtype_name(dtype: torch.dtype) -> str:
    """"bfloat16" for torch.bfloat16, and so on."""
    return str(dtype).replace("torch.", "")


@contextlib.contextmanager
def poisoned() -> Iterator[None]:
    """Inside this block every uninitialised allocation (torch.empty, empty_like, new_empty, the
    outputs a variant allocates for its kernels) is filled with NaN (integers: their maximum), so an
    element a variant forgets to write shows up as NaN instead of whatever the caching allocator
    last held there -- often the correct answer of the previous run.

    Uses torch's deterministic mode (``fill_uninitialized_memory``) with ``warn_only=True``, so ops
    without a deterministic implementation still run; the previous settings are restored on exit.
    """
    was_enabled = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    was_filling = torch.utils.deterministic.fill_uninitialized_memory
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "... does not have a deterministic implementation"
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.utils.deterministic.fill_uninitialized_memory = True
            yield
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = was_filling
        torch.use_deterministic_algorithms(was_enabled, warn_only=was_warn_only)


@dataclass
class _Upstream:
    """Random upstream gradients: ``do`` like o (v's dtype), ``dfinal_state`` like the state."""

    do: torch.Tensor
    dfinal_state: torch.Tensor

    def to(self, dtype: torch.dtype) -> "_Upstream":
        state = torch.float64 if dtype == torch.float64 else torch.float32
        return _Upstream(self.do.to(dtype), self.dfinal_state.to(state))


def _random_upstream(problem: Problem, seed: int, device) -> _Upstream:
    """do ~ N(0, 1) [B, T, H, V] in the problem's dtype; dfinal_state ~ N(0, 1) [N, H, K, V] float32."""
    gen = torch.Generator().manual_seed(seed + 7919)  # independent of the inputs' stream
    p = problem
    do = torch.randn(p.B, p.T, p.H, p.V, generator=gen, dtype=torch.float64)
    dht = torch.randn(p.num_seqs, p.H, p.K, p.V, generator=gen, dtype=torch.float64)
    state = torch.float64 if p.dtype == torch.float64 else torch.float32
    return _Upstream(do.to(device=device, dtype=p.dtype), dht.to(device=device, dtype=state))


def _run_op(
    family: str, name: str, config: Optional[dict], problem: Problem, inputs: Inputs, upstream: _Upstream, backward: bool
) -> dict[str, Optional[torch.Tensor]]:
    """One call of the public op with ``variant=name`` (and its backward): the tensors to compare.

    Returns {"o", "final_state"} and, with ``backward``, the gradients {"dq", "dk", "dv", "dbeta",
    "dh0"} (dh0 only with an initial state); a gradient the variant did not produce is None.
    """
    from deltalab.variants.op import block_diag_delta_rule, delta_rule

    leaves = [x.detach().clone().requires_grad_(backward) for x in inputs.tensors()]
    q, k, v, beta = leaves[:4]
    h0 = leaves[4] if inputs.initial_state is not None else None
    kwargs = dict(initial_state=h0, output_final_state=True, cu_seqlens=inputs.cu_seqlens, variant=name, config=config)
    with torch.set_grad_enabled(backward):
        if family == "block_diag":
            o, final_state = block_diag_delta_rule(q, k, v, beta, block_size=problem.block_size, **kwargs)
        else:
            o, final_state = delta_rule(q, k, v, beta, **kwargs)
    out: dict[str, Optional[torch.Tensor]] = {"o": o.detach(), "final_state": None if final_state is None else final_state.detach()}
    if backward:
        outputs, grads = [o], [upstream.do]
        if final_state is not None and final_state.requires_grad:
            outputs.append(final_state)
            grads.append(upstream.dfinal_state)
        torch.autograd.backward(outputs, grads)
        for key, leaf in zip(("dq", "dk", "dv", "dbeta", "dh0"), leaves):
            out[key] = leaf.grad
    return out


# Reference results, keyed by everything that determines them: every variant checked on the same
# problem and seed is compared with one reference run (the float64 recurrence is slow).
_REFERENCE_CACHE: "OrderedDict[tuple, dict]" = OrderedDict()
_REFERENCE_CACHE_SIZE = 8


def _reference_outputs(family: str, problem: Problem, inputs: Inputs, upstream: _Upstream, backward: bool, key: tuple) -> dict:
    """Variant "reference" of ``family`` on float64 copies of ``inputs`` (cached under ``key``)."""
    if key in _REFERENCE_CACHE:
        _REFERENCE_CACHE.move_to_end(key)
        return _REFERENCE_CACHE[key]
    expected = _run_op(family, "reference", None, problem, inputs.to(torch.float64), upstream.to(torch.float64), backward)
    _REFERENCE_CACHE[key] = expected
    while len(_REFERENCE_CACHE) > _REFERENCE_CACHE_SIZE:
        _REFERENCE_CACHE.popitem(last=False)
    return expected


def _describe_failure(key: str, got: Optional[torch.Tensor], ref: torch.Tensor, error: float, tol: float) -> str:
    """Why tensor ``key`` failed, in words (missing, wrong shape, non-finite, or too far off)."""
    if got is None:
        return f"{key}: not produced"
    if got.shape != ref.shape:
        return f"{key}: shape {tuple(got.shape)} != reference {tuple(ref.shape)}"
    finite = torch.isfinite(got)
    if not finite.all():
        bad = int((~finite).sum())
        return f"{key}: {bad} of {got.numel()} elements NaN/Inf"
    return f"{key}: error {error:.2e} > tolerance {tol:.1e}"


def _exception_text(stage: str, exc: BaseException, limit: int = 400) -> str:
    text = f"{stage} raised {type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_variant(
    variant: str,
    problem: Problem,
    config: Optional[dict] = None,
    *,
    family: str = "delta_rule",
    backward: bool = True,
    seed: int = 0,
    initial_state: bool = True,
    device=None,
    per_block_beta: Optional[bool] = None,
) -> CheckResult:
    """Check ``variant`` against variant "reference" on fresh random inputs for ``problem``.

    Inputs come from ``random_inputs(problem, seed=seed)`` (q, v ~ N(0, 1), normalised keys, beta in
    (0, 1), an initial state unless ``initial_state=False``); upstream gradients for o and the final
    state are random too. The variant runs through the public op (``variant=variant, config=`` the full
    config) with every uninitialised allocation poisoned with NaN (``poisoned``), forward and, when
    ``backward`` and the variant has one, backward -- and then once more as an inference call (no
    gradients: a variant may run other kernels then), its o and final state compared too; each error is
    the worse of the two calls. The reference runs on float64 copies of the same
    (already rounded) inputs. Errors are relative Frobenius errors; tolerances come from
    ``TOLERANCES`` for the problem's dtype.

    ``device`` defaults to the problem's device ("cuda" only when available); ``per_block_beta``
    (block-diagonal family only) defaults to one beta per block when there is more than one block.

    Never raises for a variant that fails or crashes: the result says so (``passed=False``,
    ``reason``). A variant or config that does not support the problem is ``skipped``.
    """
    from deltalab.variants import registry

    if device is None:
        device = "cuda" if problem.device == "cuda" and torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if problem.device != device.type:
        problem = replace(problem, device=device.type)
    result = CheckResult(variant=variant, family=family, problem=problem, config=dict(config or {}))

    try:
        impl = registry.get(variant, family)
    except ValueError as exc:
        result.reason = str(exc)
        return result
    why_not = impl.unsupported_reason(problem)
    if why_not is not None:
        result.skipped, result.reason = True, why_not
        return result
    try:
        full = impl.full_config(config)
    except (ValueError, TypeError) as exc:
        result.reason = str(exc)
        return result
    result.config = full
    why_not = impl.config_reason(full, problem)
    if why_not is not None:
        result.skipped, result.reason = True, f"config {full}: {why_not}"
        return result
    try:
        registry.get("reference", family)
    except ValueError:
        result.skipped, result.reason = True, f"no variant 'reference' registered for family {family}"
        return result

    no_backward = impl.backward_unsupported_reason(problem) if backward else None
    run_backward = backward and no_backward is None
    if no_backward is not None:
        result.notes = f"{no_backward}: forward checked only"
    if per_block_beta is None:
        per_block_beta = family == "block_diag" and problem.num_blocks > 1
    inputs = random_inputs(problem, seed=seed, device=device, initial_state=initial_state, per_block_beta=per_block_beta)
    upstream = _random_upstream(problem, seed, device)

    keys = list(FORWARD_KEYS)
    if run_backward:
        keys += [k for k in GRADIENT_KEYS if k != "dh0" or initial_state]
    result.tolerances = {k: tolerance(problem.dtype, gradient=k in GRADIENT_KEYS) for k in keys}

    try:
        cache_key = (family, problem, seed, initial_state, per_block_beta, run_backward, str(device))
        expected = _reference_outputs(family, problem, inputs, upstream, run_backward, cache_key)
    except Exception as exc:  # the oracle itself failed: nothing can be judged
        result.reason = _exception_text("reference", exc)
        return result
    # a differentiated call, then (with a backward) an inference call: variants may run other kernels when
    # nothing is kept for a backward (chunk's inference forward applies Tm in its scan)
    calls = [("", run_backward)] + ([(" (inference call)", False)] if run_backward else [])
    # the op's promise: o in v's dtype, the final state float32 (float64 for float64 inputs)
    promised = {"o": problem.dtype, "final_state": torch.float64 if problem.dtype == torch.float64 else torch.float32}
    failures = []
    for label, differentiated in calls:
        try:
            with poisoned():
                got = _run_op(family, variant, full, problem, inputs, upstream, differentiated)
        except Exception as exc:  # a crashing variant is a failed check, never a crashed gate
            result.reason = _exception_text(f"variant {variant!r}{label}", exc)
            result.errors = {k: float("inf") for k in keys}
            return result
        for key in FORWARD_KEYS if label else keys:
            out, ref = got.get(key), expected[key]
            error = float("inf") if out is None else rel_error(out, ref)
            result.errors[key] = max(error, result.errors.get(key, 0.0))  # the worse of the two calls
            if not error <= result.tolerances[key]:
                failures.append(_describe_failure(key, out, ref, error, result.tolerances[key]) + label)
        for key, dtype in promised.items():
            out = got.get(key)
            if out is not None and out.dtype != dtype:
                failures.append(f"{key}: dtype {dtype_name(out.dtype)}, expected {dtype_name(dtype)}{label}")
    result.passed = not failures
    result.reason = "; ".join(failures)
    return result


# ---------------------------------------------------------------------------------------------- check sets


def check_problems(family: str, device: str, quick: bool = False) -> list[Problem]:
    """The shape set ``deltalab check`` runs for ``family`` (dtype left at the Problem default; the
    caller sets it). CPU shapes are small (Triton's interpreter is slow) but still cover a partial
    last chunk, K != V, a non-power-of-two head dim and a packed varlen batch; GPU shapes are larger.
    ``quick`` keeps the fewest that still cover a partial chunk and varlen."""
    P = Problem
    if family == "block_diag":
        if device == "cuda":
            shapes = [P(1, 256, 2, 512, 128, block_size=128)]
            if not quick:
                shapes += [
                    P(2, 200, 2, 1024, 64, block_size=128),
                    P(1, 300, 2, 256, 64, block_size=64, num_seqs=3, varlen=True),
                ]
        else:
            shapes = [P(1, 40, 2, 64, 16, block_size=32)]
            if not quick:
                shapes += [
                    P(1, 70, 1, 128, 32, block_size=64),
                    P(1, 60, 2, 64, 32, block_size=32, num_seqs=3, varlen=True),
                ]
    else:
        if device == "cuda":
            shapes = [P(2, 250, 4, 64, 64), P(1, 400, 2, 64, 128, num_seqs=3, varlen=True)]
            if not quick:
                shapes += [P(1, 1024, 4, 128, 128), P(2, 256, 2, 256, 256), P(2, 333, 2, 100, 48)]
        else:
            shapes = [P(2, 40, 2, 32, 16), P(1, 50, 1, 16, 32, num_seqs=3, varlen=True)]
            if not quick:
                shapes += [P(2, 100, 2, 32, 32), P(1, 70, 2, 48, 64)]
    return [replace(p, device=device) for p in shapes]


def check_dtypes(device: str) -> list[torch.dtype]:
    """Default dtypes of ``deltalab check``: bf16, fp16, fp32 on a GPU; fp32 and fp16 on CPU, where
    Triton's interpreter computes ``tl.dot`` on bfloat16 wrongly (bf16 is checked on the GPU)."""
    if device == "cuda":
        return [torch.bfloat16, torch.float16, torch.float32]
    return [torch.float32, torch.float16]


def check_variants(family: str) -> list[str]:
    """The variants ``deltalab check`` covers by default: every registered one but the oracle."""
    from deltalab.variants import registry

    return [v.name for v in registry.variants(family) if not v.is_reference]


def run_checks(
    plan: list[tuple[str, str, Problem]],
    *,
    backward: bool = True,
    seed: int = 0,
    on_result=None,
) -> list[CheckResult]:
    """``check_variant`` for every (family, variant, problem) of ``plan``, in order (keep a problem's
    variants adjacent: they share one cached reference run). ``on_result(result)`` is called after
    each one (progress display)."""
    results = []
    for family, name, problem in plan:
        result = check_variant(name, problem, family=family, backward=backward, seed=seed)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def short_shape(problem: Problem) -> str:
    """A compact shape label: "B2 T40 H2 K32 V16", plus " blk32" and " varlen(3)" where they apply."""
    p = problem
    text = f"B{p.B} T{p.T} H{p.H} K{p.K} V{p.V}"
    if p.block_size != p.K:
        text += f" blk{p.block_size}"
    return text + (f" varlen({p.num_seqs})" if p.varlen else "")


_SHORT_DTYPES = {torch.float64: "fp64", torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def check_table(results: list[CheckResult], title: str = "numerics check against the float64 reference"):
    """A rich Table of check results: one row per check, the relative error of every compared tensor
    (red above its tolerance; "-" where not compared), the status and the reason (or notes)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title)
    table.add_column("family")
    table.add_column("variant", no_wrap=True)
    table.add_column("shape")
    table.add_column("dtype", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for key in ERROR_KEYS:
        table.add_column("ht" if key == "final_state" else key, justify="right", no_wrap=True)
    table.add_column("reason", overflow="fold")
    colors = {"passed": "green", "failed": "red", "skipped": "yellow"}
    for r in results:
        cells = []
        for key in ERROR_KEYS:
            error = r.errors.get(key)
            if error is None:
                cells.append("-")
            else:
                text = "NaN/Inf" if error == float("inf") else f"{error:.1e}"
                cells.append(text if error <= r.tolerances[key] else f"[red]{text}[/]")
        table.add_row(
            r.family,
            r.variant,
            short_shape(r.problem),
            _SHORT_DTYPES.get(r.problem.dtype, dtype_name(r.problem.dtype)),
            f"[{colors[r.status]}]{r.status}[/]",
            *cells,
            escape(r.reason or r.notes),
        )
    return table
