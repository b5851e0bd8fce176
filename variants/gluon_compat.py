"""What differs in Gluon's API between the Triton releases the project supports (3.6.0 to 3.9.0), resolved once
at import. The Gluon kernels call these names and nothing version-specific:

    barrier()                                   a CTA-wide barrier: gl.thread_barrier (3.6), gl.barrier (3.7+)
    tma_load(desc, coord, bar, smem, pred)      a bulk tensor copy global -> shared, completing on ``bar``:
                                                tma.async_copy_global_to_shared (3.6, 3.7), tma.async_load (3.8+)
    tma_store(desc, coord, smem)                shared -> global: tma.async_copy_shared_to_global (3.6, 3.7),
                                                tma.async_store (3.8+)
    reinterpret(smem, dtype, shape, layout)     the same shared-memory bytes seen with another shape or layout:
                                                shared_memory_descriptor._reinterpret (3.6-3.8), .reinterpret (3.9)

Importing this module raises ImportError where Gluon itself is missing or lacks one of the names above in every
spelling; the chunk variant then runs its Triton kernels (``variants.fast_paths``).
"""

from __future__ import annotations

import triton
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language._core import shared_memory_descriptor
from triton.experimental.gluon.language.nvidia.hopper import tma
from triton.language.core import builtin


def _first(namespace, *names: str):
    """The first of ``names`` that ``namespace`` has (an old name may still exist and raise when called, so the
    newest spelling comes first)."""
    for name in names:
        value = getattr(namespace, name, None)
        if value is not None:
            return value
    raise ImportError(
        f"Gluon on triton {triton.__version__} has none of {', '.join(names)} ({getattr(namespace, '__name__', namespace)})")


barrier = _first(gl, "barrier", "thread_barrier")
tma_load = _first(tma, "async_load", "async_copy_global_to_shared")
tma_store = _first(tma, "async_store", "async_copy_shared_to_global")
_REINTERPRET = _first(shared_memory_descriptor, "reinterpret", "_reinterpret").__name__


@builtin
def reinterpret(smem, dtype, shape, layout, _semantic=None):
    """``smem``'s bytes as a shared-memory descriptor of ``dtype``, ``shape`` and ``layout``."""
    return getattr(smem, _REINTERPRET)(dtype, shape, layout, _semantic=_semantic)


__all__ = ["barrier", "tma_load", "tma_store", "reinterpret"]
