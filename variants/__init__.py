"""deltalab.variants: implementations of the delta rule behind one op.

    from deltalab.variants import delta_rule
    o, final_state = delta_rule(q, k, v, beta, output_final_state=True)

Everything else in the project reaches implementations through ``registry`` (``get``, ``variants``,
``Problem``), never through a variant's own module.
"""

from . import registry
from .op import block_diag_delta_rule, delta_rule
from .registry import Cost, Problem, Variant, get, names, supporting, variants

__all__ = [
    "delta_rule",
    "block_diag_delta_rule",
    "registry",
    "Problem",
    "Cost",
    "Variant",
    "get",
    "names",
    "variants",
    "supporting",
]
