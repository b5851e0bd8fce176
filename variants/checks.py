"""Input validation for the public ops: clear errors naming the argument, never a silent wrong answer.

Only static properties (ranks, shapes, dtypes, devices) are checked here, so the checks trace under
torch.compile; the values of ``cu_seqlens`` are checked by ``check_cu_seqlens_values`` inside the op.
"""

from __future__ import annotations

from typing import Optional

import torch

_FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def _require_tensor(name: str, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")


def check_inputs(
    q,
    k,
    v,
    beta,
    initial_state,
    cu_seqlens,
    scale,
    *,
    block_size: Optional[int] = None,
) -> int:
    """Validate the arguments of ``delta_rule`` / ``block_diag_delta_rule``; returns the number of sequences.

    With ``block_size`` (the block-diagonal op) beta may also be [B, T, H, K // block_size].
    """
    for name, x in (("q", q), ("k", k), ("v", v), ("beta", beta)):
        _require_tensor(name, x)
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.dim() != 4:
            raise ValueError(f"{name}: expected a 4-D tensor [B, T, H, D], got shape {tuple(x.shape)}")
    if k.shape != q.shape:
        raise ValueError(f"k: expected the shape of q {tuple(q.shape)}, got {tuple(k.shape)}")
    B, T, H, K = q.shape
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v: expected shape [B, T, H, V] = [{B}, {T}, {H}, V], got {tuple(v.shape)}")
    V = v.shape[-1]
    if K == 0 or V == 0 or H == 0:
        raise ValueError(f"q, v: head dims and head count must be positive, got H={H} K={K} V={V}")
    if block_size is None:
        if tuple(beta.shape) != (B, T, H):
            raise ValueError(f"beta: expected shape [B, T, H] = [{B}, {T}, {H}], got {tuple(beta.shape)}")
    else:
        if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size <= 0:
            raise ValueError(f"block_size: expected a positive int, got {block_size!r}")
        if K % block_size != 0:
            raise ValueError(f"block_size: {block_size} does not divide the key dim K={K}")
        num_blocks = K // block_size
        if tuple(beta.shape) not in ((B, T, H), (B, T, H, num_blocks)):
            raise ValueError(
                f"beta: expected shape [B, T, H] = [{B}, {T}, {H}] (shared by all blocks) or "
                f"[B, T, H, K // block_size] = [{B}, {T}, {H}, {num_blocks}], got {tuple(beta.shape)}"
            )
    if q.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"q: expected a floating dtype (float64/32/16, bfloat16), got {q.dtype}")
    for name, x in (("k", k), ("v", v), ("beta", beta)):
        if x.dtype != q.dtype:
            raise TypeError(f"{name}: dtype {x.dtype} differs from q's {q.dtype}; pass one dtype for q, k, v, beta")
    for name, x in (("k", k), ("v", v), ("beta", beta)):
        if x.device != q.device:
            raise ValueError(f"{name}: on device {x.device}, but q is on {q.device}")

    if cu_seqlens is not None:
        _require_tensor("cu_seqlens", cu_seqlens)
        if cu_seqlens.dim() != 1 or cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise TypeError(
                f"cu_seqlens: expected a 1-D int32/int64 tensor, got {cu_seqlens.dim()}-D {cu_seqlens.dtype}"
            )
        if cu_seqlens.numel() < 2:
            raise ValueError("cu_seqlens: expected at least two offsets [0, ..., T]")
        if B != 1:
            raise ValueError(f"cu_seqlens: packed sequences need B == 1 (q has B={B}); flatten the batch first")
        if cu_seqlens.device != q.device:
            raise ValueError(f"cu_seqlens: on device {cu_seqlens.device}, but q is on {q.device}")
        num_seqs = cu_seqlens.shape[0] - 1
    else:
        num_seqs = B

    if initial_state is not None:
        _require_tensor("initial_state", initial_state)
        expected = (num_seqs, H, K, V)
        if tuple(initial_state.shape) != expected:
            what = "number of sequences" if cu_seqlens is not None else "B"
            raise ValueError(
                f"initial_state: expected shape [N, H, K, V] = {list(expected)} (N = {what}), "
                f"got {tuple(initial_state.shape)}"
            )
        allowed = (torch.float32, torch.float64) if q.dtype == torch.float64 else (torch.float32,)
        if initial_state.dtype not in allowed:
            raise TypeError(f"initial_state: expected float32, got {initial_state.dtype}")
        if initial_state.device != q.device:
            raise ValueError(f"initial_state: on device {initial_state.device}, but q is on {q.device}")

    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
        raise TypeError(f"scale: expected a float, got {type(scale).__name__}")
    return num_seqs


def check_cu_seqlens_values(cu_seqlens: Optional[torch.Tensor], total_tokens: int) -> None:
    """Check the offsets themselves: start at 0, never decrease, end at T."""
    if cu_seqlens is None:
        return
    offsets = cu_seqlens.tolist()
    if offsets[0] != 0:
        raise ValueError(f"cu_seqlens: must start at 0, starts at {offsets[0]}")
    if any(b < a for a, b in zip(offsets[:-1], offsets[1:])):
        raise ValueError(f"cu_seqlens: offsets must not decrease, got {offsets}")
    if offsets[-1] != total_tokens:
        raise ValueError(f"cu_seqlens: must end at T={total_tokens}, ends at {offsets[-1]}")
