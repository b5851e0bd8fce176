"""Imports every variant module once so that its ``register`` calls run (see registry._ensure_loaded)."""

from . import chunk, fused_recurrent, naive, torch_chunk  # noqa: F401
from . import block_diag  # noqa: F401,E402  (after the delta-rule variants it wraps)
