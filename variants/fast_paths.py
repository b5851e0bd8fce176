"""Fast paths that may not build on the installed Triton or GPU, and their safe fallback.

A fast path is a kernel that replaces a stage's plain Triton kernel where it pays: the Gluon kernels (Hopper's
warpgroup MMA, shared-memory workspaces) and the Triton kernels' tensor-descriptor (TMA) variants. Each one's
launch goes through ``run``:

    if fast_paths.run("scan_gluon", lambda: launch_the_gluon_scan(...)):
        return
    launch_the_triton_scan(...)

``run`` returns False, launching nothing, when the fast path could not be built -- its module failed to import,
or its kernel failed to compile (a removed API, a compile error, a shared-memory overflow). Then the
call runs the plain Triton kernels for that stage, and the process warns once for that fast path, naming it,
the Triton version and the reason; later calls skip it without trying again. A compile error surfaces before
anything is launched, so the fallback recomputes the stage from the same inputs and the answer is the one the
Triton kernels give.

``DELTALAB_FAST_PATHS``: unset (default) as above; ``strict`` re-raises instead of falling back (the GPU tests
and the compile check, where a fast path that breaks is a defect to see); ``off`` runs no fast path at all.
"""

from __future__ import annotations

import os
import warnings
from typing import Callable, Optional

import triton

# the fast paths' names: "inverse_gluon", "scan_gluon", "summary_gluon" (chunk_*_gluon.py, imported inside their
# launches) and "tma" (the Triton scans' and summaries' tensor-descriptor variants)


class FastPathWarning(UserWarning):
    """A fast path could not be built here; the call ran the plain Triton kernels instead."""


_broken: dict[str, str] = {}  # fast path -> why it cannot run in this process
_mode: list[str] = []  # DELTALAB_FAST_PATHS as first read (every launch asks; reset() reads it again)


def mode() -> str:
    """DELTALAB_FAST_PATHS: "auto" (fall back with a warning), "strict" (raise) or "off" (never try)."""
    if not _mode:
        value = os.environ.get("DELTALAB_FAST_PATHS", "auto").strip().lower() or "auto"
        if value not in ("auto", "strict", "off"):
            raise ValueError(f"DELTALAB_FAST_PATHS: expected auto, strict or off, got {value!r}")
        _mode.append(value)
    return _mode[0]


def unavailable(name: str) -> Optional[str]:
    """Why fast path ``name`` does not run in this process (None: it may)."""
    if name in _broken:
        return _broken[name]
    return "DELTALAB_FAST_PATHS=off" if mode() == "off" else None


def disable(name: str, error: BaseException) -> None:
    """Record that fast path ``name`` cannot run here, warning once; re-raise in strict mode."""
    if mode() == "strict":
        raise error
    if name in _broken:
        return
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # (a compile error's text is the kernel's source with the cause last)
    reason = f"{type(error).__name__}: {lines[-1] if lines else 'no message'}"
    _broken[name] = reason
    warnings.warn(f"deltalab: fast path {name!r} cannot run on triton {triton.__version__} ({reason[:300]}); "
                  f"running the plain Triton kernels for that stage instead", FastPathWarning, stacklevel=3)


def run(name: str, launch: Callable[[], object]) -> bool:
    """Call ``launch`` (which launches fast path ``name``'s kernel and may return False where the fast path does
    not take the call); True where it launched, False where it did not or could not (then nothing was launched)."""
    if unavailable(name):
        return False
    try:
        return launch() is not False
    except Exception as error:  # noqa: BLE001 -- compile errors of every Triton release; see the module docstring
        disable(name, error)
        return False


def reset() -> None:
    """Forget recorded failures and read DELTALAB_FAST_PATHS again (tests)."""
    _broken.clear()
    _mode.clear()
