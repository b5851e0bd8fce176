"""Why a config failed, in categories the study records (trial user attr "stage").

* "constraint" -- rejected by the variant's constraints before anything compiled;
* "compile"    -- Triton could not compile it;
* "resources"  -- out of shared memory / registers, or out of device memory;
* "numerics"   -- ran, but its results differ from the reference beyond tolerance (or NaN/Inf);
* "device_fault" -- a CUDA error that leaves the context unusable (illegal address, launch failure):
  the config is recorded as invalid and the worker stops, since nothing after it could be trusted;
* "crash"      -- it killed a precompile worker process (segfault, abort);
* "timing"     -- passed numerics but failed while being timed;
* "error"      -- any other exception (message kept).
"""

from __future__ import annotations

STAGES = ("constraint", "compile", "resources", "numerics", "device_fault", "crash", "timing", "error")

_DEVICE_FAULT = (
    "illegal memory access",
    "illegal address",
    "unspecified launch failure",
    "misaligned address",
    "device-side assert",
    "an illegal instruction",
    "cuda error: launch failure",
)
_RESOURCES = ("outofresources", "out of resource", "out of memory", "outofmemoryerror", "shared memory")
_COMPILE = ("compilationerror", "compiletimeassertionfailure", "triton.compiler", "mlir", "ptxas", "unsupported")


def classify(text: str) -> str:
    """The failure category of an exception text (``"Type: message"``) or a checker's reason."""
    low = text.lower()
    if any(s in low for s in _DEVICE_FAULT):
        return "device_fault"
    if any(s in low for s in _RESOURCES):
        return "resources"
    if any(s in low for s in _COMPILE):
        return "compile"
    return "error"


def exception_text(exc: BaseException, limit: int = 600) -> str:
    """``"Type: message"`` on one line, cut to ``limit`` characters."""
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


class DeviceFault(RuntimeError):
    """A config broke the CUDA context; raised after its trial was recorded, to stop the worker."""
