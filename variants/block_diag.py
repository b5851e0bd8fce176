"""Variants of family "block_diag": the delta rule with block-diagonal generalised Householder transitions.

Definition (../shared/deltanet.md, "Block-diagonal generalised Householder transitions"): K splits into
NB = K / Kb blocks (Kb = ``block_size``); block b owns the key slice [b*Kb, (b+1)*Kb) of q, k and of the
state, and runs its own delta rule

    h^(b)_t = (I - beta^(b)_t k^(b)_t k^(b)T_t) h^(b)_{t-1} + beta^(b)_t k^(b)_t v_t^T      (Kb x V)
    o_t     = sum_b h^(b)T_t (scale * q^(b)_t)

i.e. NB independent delta rules that share v and sum their read-outs. The op
(``block_diag_delta_rule``) always hands the variants beta of shape [B, T, H, NB]; a [B, T, H] beta
(shared by all blocks) is accepted here too, for callers that reach a variant directly, and then its
gradient is summed over the blocks.

Registered here:

* "reference": float64 token-by-token recurrence carrying all NB block states side by side
  ([H, NB, Kb, V] per sequence); the oracle of this family. Backward by autograd.
* "torch_chunk", "recurrent", "chunk": the block problem as an ordinary delta-rule problem with NB times
  the heads, run by the delta-rule variant of the same name (reached through the registry). The
  reshapes (all exact views of contiguous tensors, except v):

      q, k           [B, T, H, K]      -> [B, T, H*NB, Kb]        (head h*NB + b is block b of head h)
      beta           [B, T, H, NB]     -> [B, T, H*NB]
      v              [B, T, H, V]      -> [B, T, H*NB, V]          a COPY: v repeated for every block
      initial_state  [N, H, K, V]      -> [N, H*NB, Kb, V]
      o              [B, T, H*NB, V]   -> [B, T, H, NB, V].sum(3)  (summed in float32)
      final state    [N, H*NB, Kb, V]  -> [N, H, K, V]

  Backward: do is broadcast to every block, dv summed over the blocks, dq/dk/dbeta/dh0 reshaped back.
  Memory cost of the copy: v and do are materialised NB times (NB * B*T*H*V elements each, and the
  underlying variant's dv before the sum). Future work: a kernel-level head-group mapping (key head
  h*NB + b reads value head h, like grouped-query attention) would remove both copies and let the kernel
  accumulate the NB read-outs itself.

  Each wrapper mirrors its underlying variant: supported dtypes, devices, head-dim range (which the
  family's support check applies to ``block_size`` and V, so K = 512 or 1024 run as 4 or 8 blocks of
  128), varlen, tunable ``space``, ``default_config`` and ``constraints`` (evaluated on the per-block
  problem the kernel actually sees). A wrapper is registered only when its underlying variant is.

The K-scaling table (K = 128 ... 1024 at a fixed block size) is a harness sweep:
``deltalab sweep --family block_diag --block-size 128 --D 128,256,512,1024 --V 128 --H 4``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch

from . import registry
from .common import autograd_backward, sequence_spans, state_dtype
from .registry import Problem, Variant, register

FAMILY = "block_diag"

# delta-rule variants wrapped per block, by the same name (dispatch's rule looks up these names)
WRAPPED = ("torch_chunk", "recurrent", "chunk")


# ---------------------------------------------------------------------------------------------- shapes
def _blocks(key_dim: int, block_size: int) -> int:
    """The number of blocks NB; ValueError when ``block_size`` does not divide K."""
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size <= 0:
        raise ValueError(f"block_size: expected a positive int, got {block_size!r}")
    if key_dim % block_size != 0:
        raise ValueError(f"block_size: {block_size} does not divide the key dim K={key_dim}")
    return key_dim // block_size


def _per_block_beta(beta: torch.Tensor, q: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """beta as [B, T, H, NB]: a shared [B, T, H] beta is broadcast (a view); other shapes are refused."""
    B, T, H, _ = q.shape
    if tuple(beta.shape) == (B, T, H):
        return beta.unsqueeze(-1).expand(B, T, H, num_blocks)
    if tuple(beta.shape) != (B, T, H, num_blocks):
        raise ValueError(
            f"beta: expected shape [B, T, H] = [{B}, {T}, {H}] or [B, T, H, K // block_size] = "
            f"[{B}, {T}, {H}, {num_blocks}], got {tuple(beta.shape)}"
        )
    return beta


# ------------------------------------------------------------------------------------------ reference
def block_reference_forward(q, k, v, beta, *, scale, initial_state, output_final_state, cu_seqlens, config, block_size):
    """The defining per-block recurrence in float64, all blocks of all heads at once.

    Per sequence the state is h [H, NB, Kb, V] (block b of head h at h[h, b]); per token, with
    k_t, q_t [H, NB, Kb] (the blocks' key slices), beta_t [H, NB] and v_t [H, V] shared by the blocks:
        u   = beta_t (v_t - h^T k_t)           [H, NB, V]   every block's pseudo value
        h  <- h + k_t u^T                      [H, NB, Kb, V]
        o_t = sum_b h^T (scale q_t)            [H, V]       read-outs summed over the blocks
    Returns o [B, T, H, V] in v's dtype and the final state [N, H, K, V] (float32; float64 for float64).
    """
    B, T, H, K = k.shape
    V = v.shape[-1]
    num_blocks = _blocks(K, block_size)
    q64 = q.to(torch.float64).reshape(B, T, H, num_blocks, block_size) * scale
    k64 = k.to(torch.float64).reshape(B, T, H, num_blocks, block_size)
    v64 = v.to(torch.float64)
    b64 = _per_block_beta(beta, q, num_blocks).to(torch.float64)
    outputs, finals = [], []
    for n, (b, start, end) in enumerate(sequence_spans(B, T, cu_seqlens)):
        if initial_state is not None:
            h = initial_state[n].to(torch.float64).reshape(H, num_blocks, block_size, V)
        else:
            h = torch.zeros(H, num_blocks, block_size, V, dtype=torch.float64, device=q.device)
        rows = []
        for t in range(start, end):
            k_t = k64[b, t]  # [H, NB, Kb]
            u = b64[b, t, :, :, None] * (v64[b, t, :, None, :] - torch.einsum("hnkv,hnk->hnv", h, k_t))
            h = h + k_t[..., None] * u[..., None, :]
            rows.append(torch.einsum("hnkv,hnk->hv", h, q64[b, t]))
        outputs.append(torch.stack(rows) if rows else v64.new_zeros(0, H, V))
        finals.append(h.reshape(H, K, V))
    o = torch.stack(outputs) if cu_seqlens is None else torch.cat(outputs)[None]
    final_state = torch.stack(finals).to(state_dtype(q.dtype)) if output_final_state else None
    return o.to(v.dtype), final_state


register(
    "reference",
    family=FAMILY,
    backward=autograd_backward(block_reference_forward),
    description="float64 per-block token-by-token recurrence (the oracle)",
    dtypes=(torch.float64, torch.float32, torch.float16, torch.bfloat16),
    devices=("cpu", "cuda"),
    max_head_dim=4096,
    is_reference=True,
)(block_reference_forward)


# ------------------------------------------------------------------------ per-block delta-rule wrappers
def block_problem(problem: Problem) -> Problem:
    """The ordinary delta-rule problem the underlying variant sees: NB times the heads, key dim Kb."""
    kb = problem.block_size
    return replace(problem, H=problem.H * problem.num_blocks, K=kb, block_size=kb)


def _split_heads(x: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """[B, T, H, K] -> [B, T, H*NB, Kb] (a view of a contiguous tensor)."""
    B, T, H, K = x.shape
    return x.contiguous().view(B, T, H * num_blocks, K // num_blocks)


def _state_to_blocks(state: Optional[torch.Tensor], num_blocks: int) -> Optional[torch.Tensor]:
    """[N, H, K, V] -> [N, H*NB, Kb, V] (exact: block b's rows of the state are contiguous)."""
    if state is None:
        return None
    N, H, K, V = state.shape
    return state.contiguous().view(N, H * num_blocks, K // num_blocks, V)


def _state_from_blocks(state: Optional[torch.Tensor], heads: int) -> Optional[torch.Tensor]:
    """[N, H*NB, Kb, V] -> [N, H, K, V]."""
    if state is None:
        return None
    N, HB, Kb, V = state.shape
    return state.reshape(N, heads, (HB // heads) * Kb, V)


def _repeat_per_block(x: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """[B, T, H, V] -> [B, T, H*NB, V], x repeated for every block (a copy, contiguous)."""
    B, T, H, V = x.shape
    # .contiguous() before the view: reshape alone may return a stride-0 view (H == 1), which kernels misread
    return x.unsqueeze(3).expand(B, T, H, num_blocks, V).contiguous().view(B, T, H * num_blocks, V)


def _sum_blocks(x: torch.Tensor, heads: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, T, H*NB, V] -> [B, T, H, V], summed over the blocks in float32 (or float64) then cast."""
    B, T, HB, V = x.shape
    acc = state_dtype(x.dtype)
    return x.view(B, T, heads, HB // heads, V).to(acc).sum(3).to(dtype)


def block_forward(base: Variant):
    """``forward`` of the block wrapper around delta-rule variant ``base`` (see the module docstring)."""

    def forward(q, k, v, beta, *, scale, initial_state, output_final_state, cu_seqlens, config, block_size,
                **keep):
        # keep: ``keep_residuals`` when ``base`` keeps residuals (its residual is passed on as it is)
        H = q.shape[2]
        num_blocks = _blocks(q.shape[-1], block_size)
        beta_blocks = _per_block_beta(beta, q, num_blocks).contiguous()
        o, final_state, *residual = base.forward(
            _split_heads(q, num_blocks),
            _split_heads(k, num_blocks),
            _repeat_per_block(v, num_blocks),
            beta_blocks.view(*beta_blocks.shape[:2], H * num_blocks),
            scale=scale,
            initial_state=_state_to_blocks(initial_state, num_blocks),
            output_final_state=output_final_state,
            cu_seqlens=cu_seqlens,
            config=config,
            block_size=block_size,
            **keep,
        )
        final_state = _state_from_blocks(final_state, H) if output_final_state else None
        return (_sum_blocks(o, H, v.dtype), final_state, *residual)

    return forward


def block_backward(base: Variant):
    """``backward`` of the block wrapper around ``base``: the per-block gradients mapped back.

    do reaches every block unchanged (o is a plain sum over blocks); v feeds every block, so dv is the sum
    of the blocks' dv; the rest are exact reshapes. A shared [B, T, H] beta gets the blocks' dbeta summed.
    """

    def backward(q, k, v, beta, *, scale, initial_state, cu_seqlens, do, dfinal_state, config, block_size, **residual):
        B, T, H, K = q.shape
        num_blocks = _blocks(K, block_size)
        beta_blocks = _per_block_beta(beta, q, num_blocks).contiguous()
        dq, dk, dv, dbeta, dh0 = base.backward(
            _split_heads(q, num_blocks),
            _split_heads(k, num_blocks),
            _repeat_per_block(v, num_blocks),
            beta_blocks.view(B, T, H * num_blocks),
            scale=scale,
            initial_state=_state_to_blocks(initial_state, num_blocks),
            cu_seqlens=cu_seqlens,
            do=_repeat_per_block(do, num_blocks),
            dfinal_state=_state_to_blocks(dfinal_state, num_blocks),
            config=config,
            block_size=block_size,
            **residual,
        )
        dbeta = dbeta.reshape(B, T, H, num_blocks)
        if beta.dim() == 3:
            dbeta = dbeta.to(state_dtype(dbeta.dtype)).sum(-1).to(beta.dtype)
        return (
            dq.reshape(B, T, H, K),
            dk.reshape(B, T, H, K),
            _sum_blocks(dv, H, v.dtype),
            dbeta,
            _state_from_blocks(dh0, H) if initial_state is not None else None,
        )

    return backward


def register_block_variant(name: str, base_name: Optional[str] = None) -> bool:
    """Register block variant ``name`` wrapping delta-rule variant ``base_name`` (default: the same name).

    Returns False (registering nothing) when the delta-rule variant is not registered. Support fields,
    space, default config and constraints are copied from it; constraints and costs see the problem the
    kernel runs (``block_problem``) -- the cost model counts all NB blocks through ``problem.block_size``.
    """
    base_name = base_name or name
    if base_name not in registry.names("delta_rule"):
        return False
    base = registry.get(base_name, "delta_rule")

    def constraints(config, problem: Problem) -> Optional[str]:
        return base.config_reason(config, block_problem(problem))

    def backward_limit(problem: Problem) -> Optional[str]:
        return base.backward_limit(block_problem(problem))

    register(
        name,
        family=FAMILY,
        backward=block_backward(base) if base.backward is not None else None,
        description=f"NB per-block delta rules run by delta_rule {base_name!r} (heads x NB, v repeated)",
        dtypes=base.dtypes,
        devices=base.devices,
        min_head_dim=base.min_head_dim,
        max_head_dim=base.max_head_dim,
        varlen=base.varlen,
        space=dict(base.space),
        default_config=dict(base.default_config),
        constraints=constraints if base.constraints is not None else None,
        # delta_rule_cost (what the delta-rule variants use) already counts NB blocks of size Kb
        cost=base.cost,
        is_triton=base.is_triton,
        backward_limit=backward_limit if base.backward_limit is not None else None,
        keeps_residuals=base.keeps_residuals,
    )(block_forward(base))
    return True


for _name in WRAPPED:
    register_block_variant(_name)
