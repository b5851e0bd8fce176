"""The variant registry: every implementation of the delta rule is registered here, by decorator.

Tuner, harness and reports reach implementations only through this module (``get``, ``variants``,
``Problem``), never by importing a variant's own file. A variant declares:

* ``name`` and ``family`` -- ``"delta_rule"`` (the ordinary op) or ``"block_diag"`` (block-diagonal
  generalised Householder transitions);
* what it supports: dtypes, device types, head-dim range, varlen, backward;
* its tunable ``space`` (name -> allowed values), ``default_config`` and ``constraints`` (a function that
  returns the reason a config cannot run on a problem, or None);
* a ``cost`` model (FLOPs and minimum bytes of a problem) for roofline figures;
* ``forward`` and, when it has one, ``backward`` (see the signatures on ``Variant``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch

FAMILIES = ("delta_rule", "block_diag")

Config = dict[str, Any]


@dataclass(frozen=True)
class Problem:
    """The static description of one call: what support checks, constraints and cost models look at.

    ``num_seqs`` is the number of sequences (B, or len(cu_seqlens) - 1 for packed batches) and
    ``block_size`` the key block of the block-diagonal family (equal to K for the ordinary delta rule).
    """

    B: int
    T: int
    H: int
    K: int
    V: int
    dtype: torch.dtype = torch.bfloat16
    num_seqs: Optional[int] = None
    varlen: bool = False
    block_size: Optional[int] = None
    device: str = "cuda"

    def __post_init__(self) -> None:
        if self.num_seqs is None:
            object.__setattr__(self, "num_seqs", self.B)
        if self.block_size is None:
            object.__setattr__(self, "block_size", self.K)

    @property
    def tokens(self) -> int:
        return self.B * self.T

    @property
    def num_blocks(self) -> int:
        return self.K // self.block_size

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    def describe(self) -> str:
        dt = str(self.dtype).replace("torch.", "")
        s = f"B={self.B} T={self.T} H={self.H} K={self.K} V={self.V} {dt}"
        if self.block_size != self.K:
            s += f" block={self.block_size}"
        return s + (" varlen" if self.varlen else "")


@dataclass(frozen=True)
class Cost:
    """Work of one call: FLOPs and the fewest bytes it must move through device memory."""

    flops: float
    bytes: float


def delta_rule_cost(problem: Problem, chunk_size: int = 64, backward: bool = False) -> Cost:
    """Cost model of ../shared/deltanet.md for the chunkwise form (chunk_size=1 for the recurrence).

    Forward: 6KV + 6CK + 4CV FLOPs per token and head (3KV + 3CK + 2CV multiply-adds); bytes: read q, k,
    v, beta, write o, plus initial/final states. Backward is counted as twice the forward's FLOPs plus a
    recompute of the forward (3x in all, the usual estimate), and reads q, k, v, beta, do, writes
    dq, dk, dv, dbeta.
    """
    p = problem
    kb = p.block_size
    nb = p.num_blocks
    # the block-diagonal form is nb independent delta rules of key size kb sharing v
    per_token = nb * (6 * kb * p.V + 6 * chunk_size * kb + 4 * chunk_size * p.V)
    flops = float(per_token) * p.tokens * p.H
    isz = p.itemsize
    beta_cols = 1
    io = p.tokens * p.H * (2 * p.K + 2 * p.V + beta_cols) * isz
    if backward:
        flops *= 3.0
        io = 2 * io + p.tokens * p.H * p.V * isz  # inputs + do read; four grads written
    return Cost(flops=flops, bytes=float(io))


@dataclass
class Variant:
    """One registered implementation.

    ``forward(q, k, v, beta, *, scale, initial_state, output_final_state, cu_seqlens, config,
    block_size)`` returns ``(o, final_state or None)``; o in v's dtype, final_state float32 (float64 for
    float64 inputs) of shape [N, H, K, V].

    ``backward(q, k, v, beta, *, scale, initial_state, cu_seqlens, do, dfinal_state, config,
    block_size)`` returns ``(dq, dk, dv, dbeta, dinitial_state)``; ``dfinal_state`` and
    ``initial_state`` may be None, and then ``dinitial_state`` is None. ``backward_limit(problem)``
    names problems the backward refuses although the forward runs them.

    A variant with ``keeps_residuals`` hands its backward what its forward computed: given the keyword
    ``keep_residuals`` (True when the call will be differentiated), ``forward`` returns ``(o,
    final_state, residual)``, residual a flat tensor in the input dtype or None (nothing kept: the
    backward recomputes); ``backward`` takes ``residual`` (that tensor or None; absent means None).
    """

    name: str
    family: str
    forward: Callable[..., tuple]
    backward: Optional[Callable[..., tuple]] = None
    description: str = ""
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16)
    devices: tuple[str, ...] = ("cuda",)
    min_head_dim: int = 1
    max_head_dim: int = 256
    varlen: bool = True
    space: dict[str, tuple] = field(default_factory=dict)
    default_config: Config = field(default_factory=dict)
    constraints: Optional[Callable[[Config, Problem], Optional[str]]] = None
    cost: Callable[[Problem, Config], Cost] = lambda p, c: delta_rule_cost(p, c.get("chunk_size", 1))
    is_reference: bool = False
    is_triton: bool = False
    # why the backward cannot run a problem the forward can (None: it can), e.g. a known defect
    backward_limit: Optional[Callable[[Problem], Optional[str]]] = None
    keeps_residuals: bool = False

    @property
    def supports_backward(self) -> bool:
        return self.backward is not None

    def backward_unsupported_reason(self, problem: Problem) -> Optional[str]:
        """Why the backward cannot run ``problem`` (None when it can; the forward is checked apart)."""
        if self.backward is None:
            return "no backward"
        return None if self.backward_limit is None else self.backward_limit(problem)

    # ------------------------------------------------------------------ support and configs
    def unsupported_reason(self, problem: Problem) -> Optional[str]:
        """Why this variant cannot run ``problem`` (None when it can)."""
        if problem.device not in self.devices:
            return f"device {problem.device!r} not supported (supports {', '.join(self.devices)})"
        if problem.dtype not in self.dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in self.dtypes)
            return f"dtype {str(problem.dtype).replace('torch.', '')} not supported (supports {names})"
        key_dim = problem.block_size if self.family == "block_diag" else problem.K
        for dim_name, dim in (("K" if self.family == "delta_rule" else "block_size", key_dim), ("V", problem.V)):
            if not (self.min_head_dim <= dim <= self.max_head_dim):
                return f"{dim_name}={dim} outside the supported range [{self.min_head_dim}, {self.max_head_dim}]"
        if problem.varlen and not self.varlen:
            return "packed varlen batches (cu_seqlens) not supported"
        return None

    def check_config(self, config: Config) -> None:
        """Raise ValueError for unknown keys or values outside the declared space."""
        for key, value in config.items():
            if key not in self.space:
                known = ", ".join(sorted(self.space)) or "none"
                raise ValueError(
                    f"config: unknown key {key!r} for variant {self.name!r} (tunable keys: {known})"
                )
            if value not in self.space[key]:
                raise ValueError(
                    f"config: {key}={value!r} is not allowed for variant {self.name!r} "
                    f"(allowed: {list(self.space[key])})"
                )

    def full_config(self, config: Optional[Config]) -> Config:
        """The default config updated with ``config`` (validated)."""
        cfg = dict(self.default_config)
        if config:
            self.check_config(config)
            cfg.update(config)
        return cfg

    def config_reason(self, config: Config, problem: Problem) -> Optional[str]:
        """Why ``config`` cannot run ``problem`` (None when it can), before anything compiles."""
        if self.constraints is None:
            return None
        return self.constraints(config, problem)

    def iter_configs(self) -> Iterator[Config]:
        """Every point of the declared space (the cartesian product), constraints not applied."""
        keys = sorted(self.space)
        for values in itertools.product(*(self.space[k] for k in keys)):
            yield dict(zip(keys, values))

    def space_size(self) -> int:
        return math.prod(len(v) for v in self.space.values()) if self.space else 1


_REGISTRY: dict[tuple[str, str], Variant] = {}


def register(name: str, family: str = "delta_rule", **fields: Any) -> Callable[[Callable], Callable]:
    """Decorator registering ``forward`` as variant ``name`` of ``family``; other fields as keywords.

    >>> @register("reference", backward=my_backward, devices=("cpu", "cuda"))
    ... def forward(q, k, v, beta, *, scale, initial_state, output_final_state, cu_seqlens, config,
    ...             block_size): ...
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")

    def deco(forward: Callable) -> Callable:
        if (family, name) in _REGISTRY:
            raise ValueError(f"variant {name!r} of family {family!r} is already registered")
        variant = Variant(name=name, family=family, forward=forward, **fields)
        variant.check_config(variant.default_config)
        _REGISTRY[(family, name)] = variant
        return forward

    return deco


def unregister(name: str, family: str = "delta_rule") -> None:
    """Remove a variant (tests register deliberately broken variants and remove them again)."""
    _REGISTRY.pop((family, name), None)


def variants(family: Optional[str] = "delta_rule") -> list[Variant]:
    """Registered variants of ``family`` (all families when None), in registration order."""
    _ensure_loaded()
    return [v for (fam, _), v in _REGISTRY.items() if family is None or fam == family]


def names(family: str = "delta_rule") -> list[str]:
    return [v.name for v in variants(family)]


def get(name: str, family: str = "delta_rule") -> Variant:
    """The variant called ``name``; ValueError naming the known ones otherwise."""
    _ensure_loaded()
    try:
        return _REGISTRY[(family, name)]
    except KeyError:
        known = ", ".join(names(family))
        raise ValueError(f"variant: unknown variant {name!r} for {family} (known: auto, {known})") from None


def supporting(problem: Problem, family: str = "delta_rule") -> list[str]:
    """Names of the variants that can run ``problem``."""
    return [v.name for v in variants(family) if v.unsupported_reason(problem) is None]


_LOADED = False


def _ensure_loaded() -> None:
    """Import the variant modules once, so that their decorators run."""
    global _LOADED
    if not _LOADED:
        _LOADED = True
        from . import _catalog  # noqa: F401  (imports every variant module)
