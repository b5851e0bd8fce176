"""The public ops ``delta_rule`` and ``block_diag_delta_rule``.

Both are thin Python wrappers (validation, optional L2 normalisation, beta broadcast) around two
``torch.library`` custom ops, ``deltalab::delta_rule_fwd`` and ``deltalab::delta_rule_bwd``, which carry
fake-tensor implementations and an autograd formula. torch.compile therefore traces through the op with
no graph break, forward and backward. Eager calls run the same implementations and formula through a
plain ``torch.autograd.Function`` (``_EagerDeltaRule``): the dispatcher was a third of the host time.
Variant and config resolution (``variant="auto"``, ``config=None``) happens inside the ops' implementations,
where it runs eagerly.

When the call will be differentiated, variants that keep residuals (``Variant.keeps_residuals``: "chunk")
return what their backward would otherwise recompute as a third output of the forward op, a flat buffer
whose size depends on the resolved config (the fake implementation gives it a data-dependent size); the
autograd formula saves it and hands it to the backward op.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import registry
from .checks import check_cu_seqlens_values, check_inputs
from .common import state_dtype
from .dispatch import resolve
from .registry import Problem

_EMPTY = (0,)


def _encode_config(config: Optional[dict[str, Any]]) -> str:
    """A config dict as the custom op's string argument ("key=value;..."), values int, float, bool or str."""
    if not config:
        return ""
    parts = []
    for key in sorted(config):
        value = config[key]
        if isinstance(value, bool):
            kind = "b"
        elif isinstance(value, int):
            kind = "i"
        elif isinstance(value, float):
            kind = "f"
        elif isinstance(value, str):
            kind = "s"
        else:
            raise TypeError(f"config: value of {key!r} must be int, float, bool or str, got {type(value).__name__}")
        parts.append(key + ":" + kind + "=" + str(value))
    return ";".join(parts)


def _decode_config(text: str) -> Optional[dict[str, Any]]:
    if not text:
        return None
    config: dict[str, Any] = {}
    for part in text.split(";"):
        key_kind, value = part.split("=", 1)
        key, kind = key_kind.rsplit(":", 1)
        config[key] = {"b": lambda s: s == "True", "i": int, "f": float, "s": str}[kind](value)
    return config


def _problem(q: Tensor, v: Tensor, cu_seqlens: Optional[Tensor], block_size: int) -> Problem:
    B, T, H, K = q.shape
    return Problem(
        B=B,
        T=T,
        H=H,
        K=K,
        V=v.shape[-1],
        dtype=q.dtype,
        num_seqs=B if cu_seqlens is None else cu_seqlens.numel() - 1,
        varlen=cu_seqlens is not None,
        block_size=block_size,
        device=q.device.type,
    )


def _forward_impl(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    initial_state: Optional[Tensor],
    cu_seqlens: Optional[Tensor],
    scale: float,
    output_final_state: bool,
    family: str,
    variant: str,
    config: str,
    block_size: int,
    grad: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    check_cu_seqlens_values(cu_seqlens, q.shape[1])
    impl, cfg = resolve(family, variant, _decode_config(config), _problem(q, v, cu_seqlens, block_size), grad)
    kwargs = dict(scale=scale, initial_state=initial_state, output_final_state=output_final_state,
                  cu_seqlens=cu_seqlens, config=cfg, block_size=block_size)
    residual = None
    if impl.keeps_residuals:
        o, final_state, residual = impl.forward(q, k, v, beta, keep_residuals=grad, **kwargs)
    else:
        o, final_state = impl.forward(q, k, v, beta, **kwargs)
    if residual is None:
        residual = q.new_empty(_EMPTY)
    if final_state is None:
        final_state = q.new_empty(_EMPTY, dtype=state_dtype(q.dtype))
    elif initial_state is not None and final_state.data_ptr() == initial_state.data_ptr():
        final_state = final_state.clone()  # a custom op's output may not alias an input (T = 0)
    # outputs must have the strides the fake implementation promises (contiguous)
    return o.contiguous(), final_state.contiguous(), residual


_delta_rule_fwd = torch.library.custom_op("deltalab::delta_rule_fwd", mutates_args=())(_forward_impl)


@_delta_rule_fwd.register_fake
def _delta_rule_fwd_fake(q, k, v, beta, initial_state, cu_seqlens, scale, output_final_state, family, variant, config,
                         block_size, grad):
    B, T, H, K = q.shape
    o = v.new_empty(B, T, H, v.shape[-1])
    if output_final_state:
        num_seqs = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
        final_state = q.new_empty(num_seqs, H, K, v.shape[-1], dtype=state_dtype(q.dtype))
    else:
        final_state = q.new_empty(_EMPTY, dtype=state_dtype(q.dtype))
    # the residual's size depends on the config resolved inside the op (empty when nothing is kept)
    residual = q.new_empty(torch.library.get_ctx().new_dynamic_size()) if grad else q.new_empty(_EMPTY)
    return o, final_state, residual


def _backward_impl(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    initial_state: Optional[Tensor],
    cu_seqlens: Optional[Tensor],
    residual: Tensor,
    do: Tensor,
    dfinal_state: Optional[Tensor],
    scale: float,
    family: str,
    variant: str,
    config: str,
    block_size: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    impl, cfg = resolve(family, variant, _decode_config(config), _problem(q, v, cu_seqlens, block_size))
    if impl.backward is None:
        raise NotImplementedError(f"variant {impl.name!r} has no backward; pick one that declares it")
    kwargs = dict(scale=scale, initial_state=initial_state, cu_seqlens=cu_seqlens, do=do.contiguous(),
                  dfinal_state=None if dfinal_state is None else dfinal_state.contiguous(), config=cfg,
                  block_size=block_size)
    if impl.keeps_residuals:
        kwargs["residual"] = residual if residual.numel() else None
    dq, dk, dv, dbeta, dh0 = impl.backward(q, k, v, beta, **kwargs)
    if dh0 is None:
        dh0 = q.new_empty(_EMPTY, dtype=state_dtype(q.dtype))
    return dq.contiguous(), dk.contiguous(), dv.contiguous(), dbeta.contiguous(), dh0.contiguous()


_delta_rule_bwd = torch.library.custom_op("deltalab::delta_rule_bwd", mutates_args=())(_backward_impl)


@_delta_rule_bwd.register_fake
def _delta_rule_bwd_fake(q, k, v, beta, initial_state, cu_seqlens, residual, do, dfinal_state, scale, family, variant,
                         config, block_size):
    dh0 = torch.empty_like(initial_state) if initial_state is not None else q.new_empty(_EMPTY, dtype=state_dtype(q.dtype))
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(beta), dh0


def _setup_context(ctx, inputs, output):
    q, k, v, beta, initial_state, cu_seqlens, scale, output_final_state, family, variant, config, block_size, _ = inputs
    ctx.save_for_backward(q, k, v, beta, initial_state, cu_seqlens, output[2])
    # unused outputs get None, not zeros: the residual never has a gradient (materialising one would fill
    # a buffer of its size on every backward)
    ctx.set_materialize_grads(False)
    ctx.params = (scale, output_final_state, family, variant, config, block_size)


def _backward(ctx, do, dfinal_state, _dresidual, backward_op=None):
    """The autograd formula: ``backward_op`` is the backward custom op (default), or its implementation
    called directly (eager calls, ``_EagerDeltaRule``)."""
    q, k, v, beta, initial_state, cu_seqlens, residual = ctx.saved_tensors
    scale, output_final_state, family, variant, config, block_size = ctx.params
    if do is None:  # o unused downstream (o has v's shape and dtype)
        do = torch.zeros_like(v)
    dq, dk, dv, dbeta, dh0 = (backward_op or torch.ops.deltalab.delta_rule_bwd)(
        q,
        k,
        v,
        beta,
        initial_state,
        cu_seqlens,
        residual,
        do,
        dfinal_state if output_final_state else None,
        scale,
        family,
        variant,
        config,
        block_size,
    )
    return dq, dk, dv, dbeta, (dh0 if initial_state is not None else None), None, None, None, None, None, None, None, None


_delta_rule_fwd.register_autograd(_backward, setup_context=_setup_context)


class _EagerDeltaRule(torch.autograd.Function):
    """Eager calls: the custom ops' implementations and autograd formula without the dispatcher, which
    cost about a third of the op's host time per forward+backward (~0.35 of ~1.1 ms measured on a CPU
    with the kernels stubbed out) -- time a short GPU call cannot hide. Under torch.compile the op goes
    through the custom ops (``_call``), so both paths run the same code."""

    @staticmethod
    def forward(ctx, *inputs):
        with torch.profiler.record_function("deltalab::delta_rule_fwd"):  # profiles name the op as before
            output = _forward_impl(*inputs)
        _setup_context(ctx, inputs, output)
        ctx.mark_non_differentiable(output[2])
        return output

    @staticmethod
    def backward(ctx, do, dfinal_state, dresidual):
        return _backward(ctx, do, dfinal_state, dresidual, backward_op=_profiled_backward)


def _profiled_backward(*args):
    with torch.profiler.record_function("deltalab::delta_rule_bwd"):
        return _backward_impl(*args)


def _call(
    family: str,
    block_size: Optional[int],
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    scale: Optional[float],
    initial_state: Optional[Tensor],
    output_final_state: bool,
    cu_seqlens: Optional[Tensor],
    qk_l2norm: bool,
    variant: str,
    config: Optional[dict[str, Any]],
) -> tuple[Tensor, Optional[Tensor]]:
    check_inputs(q, k, v, beta, initial_state, cu_seqlens, scale, block_size=block_size)
    if not isinstance(variant, str):
        raise TypeError(f"variant: expected a name (str), got {type(variant).__name__}")
    if config is not None and not isinstance(config, dict):
        raise TypeError(f"config: expected a dict of tunable settings or None, got {type(config).__name__}")
    if variant != "auto":
        impl = registry.get(variant, family)  # ValueError naming the known variants
        if config:
            impl.check_config(config)
    K = q.shape[-1]
    block = K if block_size is None else block_size
    if scale is None:
        scale = K**-0.5
    if qk_l2norm:
        # each block's slice of q and k is normalised on its own (the whole head when block == K)
        shape = q.shape
        q = F.normalize(q.reshape(*shape[:3], K // block, block), dim=-1).reshape(shape)
        k = F.normalize(k.reshape(*shape[:3], K // block, block), dim=-1).reshape(shape)
    if beta.dim() == 3 and family == "block_diag":
        beta = beta.unsqueeze(-1).expand(*beta.shape, K // block)  # shared beta: autograd sums it back
    # a call that will be differentiated gets configs measured forward+backward (its backward resolves
    # with grad=True too); inference gets forward-measured ones where an export has them
    grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (q, k, v, beta, initial_state))
    forward = torch.ops.deltalab.delta_rule_fwd if torch.compiler.is_compiling() else _EagerDeltaRule.apply
    o, final_state, _residual = forward(
        q.contiguous(),
        k.contiguous(),
        v.contiguous(),
        beta.contiguous(),
        None if initial_state is None else initial_state.contiguous(),
        cu_seqlens,
        float(scale),
        bool(output_final_state),
        family,
        variant,
        _encode_config(config),
        block,
        grad,
    )
    return o, (final_state if output_final_state else None)


def delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    *,
    scale: Optional[float] = None,
    initial_state: Optional[Tensor] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[Tensor] = None,
    qk_l2norm: bool = False,
    variant: str = "auto",
    config: Optional[dict[str, Any]] = None,
) -> tuple[Tensor, Optional[Tensor]]:
    """The delta rule (DeltaNet's recurrence) over a batch of sequences.

    Args:
        q, k: [B, T, H, K]; keys should be L2-normalised per head (or pass ``qk_l2norm=True``).
        v: [B, T, H, V].
        beta: [B, T, H], values in (0, 1).
        scale: multiplies q; defaults to K ** -0.5.
        initial_state: [N, H, K, V] float32, N = B, or the number of sequences with ``cu_seqlens``.
        output_final_state: also return the final state [N, H, K, V] (float32).
        cu_seqlens: packed variable-length batch (B must be 1): int offsets [0, l1, l1+l2, ..., T].
        qk_l2norm: L2-normalise q and k per head inside the op (differentiable).
        variant: a registered implementation ("reference", "torch_chunk", "recurrent", "chunk", ...) or
            "auto" (exported tuning results, else the rule documented in ``deltalab.variants.dispatch``).
        config: the variant's tunable settings, e.g. ``{"chunk_size": 32}``; None takes the exported
            best config for this device and shape, else the variant's default.

    Returns:
        (o [B, T, H, V] in v's dtype, final_state [N, H, K, V] float32 or None).
    """
    return _call("delta_rule", None, q, k, v, beta, scale, initial_state, output_final_state, cu_seqlens, qk_l2norm, variant, config)


def block_diag_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    *,
    block_size: int,
    scale: Optional[float] = None,
    initial_state: Optional[Tensor] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[Tensor] = None,
    qk_l2norm: bool = False,
    variant: str = "auto",
    config: Optional[dict[str, Any]] = None,
) -> tuple[Tensor, Optional[Tensor]]:
    """The delta rule with block-diagonal generalised Householder transitions.

    K is split into K // block_size blocks; each block runs its own delta rule on its slice of q and k
    (each slice L2-normalised on its own), all blocks share v, and their read-outs are summed. beta is
    [B, T, H] (shared by all blocks) or [B, T, H, K // block_size]. With ``block_size == K`` this is
    exactly ``delta_rule``. Other arguments and the returns are as in ``delta_rule``; the state is
    [N, H, K, V] (the blocks' states stacked along K).
    """
    if block_size is None:  # check_inputs reads None as "the ordinary delta rule"
        raise ValueError("block_size: expected a positive int, got None")
    return _call("block_diag", block_size, q, k, v, beta, scale, initial_state, output_final_state, cu_seqlens, qk_l2norm, variant, config)
