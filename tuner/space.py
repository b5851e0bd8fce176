"""The search space of one tuning study: a variant's declared ``space`` on one problem.

Everything comes from the variant's registry entry: the tunable keys and their allowed values
(``Variant.space``), the ``default_config``, and ``config_reason(config, problem)`` -- the constraints,
applied to every suggested config before anything compiles. Configs are compared by ``config_key``
(canonical JSON), which is how the study recognises a config it has already seen.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Iterator, Optional

from deltalab.variants.registry import Config, Problem, Variant


ENUMERATE_LIMIT = 200_000  # spaces up to this many points are enumerated to apply the constraints


def config_key(config: Config) -> str:
    """Canonical text of a config: sorted keys, no spaces (``{"a":1,"b":"x"}``)."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class SearchSpace:
    """The tunable keys of ``variant`` (sorted) with their allowed values, for ``problem``.

    ``only``: search just these keys (those the variant has); every other key stays at its default
    (for chunk, 0 = the automatic choice). Empty, or none of them the variant's: the whole space.
    """

    variant: Variant
    problem: Problem
    only: tuple = ()

    @property
    def params(self) -> dict[str, list]:
        """Key -> allowed values, as Optuna categorical choices."""
        return {key: list(self.variant.space[key]) for key in self.keys}

    @property
    def keys(self) -> list[str]:
        chosen = [key for key in self.only if key in self.variant.space]
        return sorted(chosen or self.variant.space)

    @property
    def size(self) -> int:
        """Points in the cartesian product (constraints not applied)."""
        return math.prod(len(self.variant.space[key]) for key in self.keys)

    @property
    def default(self) -> Config:
        """The variant's default config restricted to the tunable keys (all of them, in practice)."""
        return {key: self.variant.default_config[key] for key in self.keys if key in self.variant.default_config}

    def suggest(self, trial) -> Config:
        """Ask an Optuna trial for one value of every key (enqueued trials get their fixed values)."""
        return {key: trial.suggest_categorical(key, choices) for key, choices in self.params.items()}

    def complete(self, config: Config) -> Config:
        """``config`` over the default, restricted to the tunable keys."""
        full = self.variant.full_config(config)
        return {key: full[key] for key in self.keys}

    def contains(self, config: Config) -> bool:
        """Whether ``config`` sets exactly the tunable keys to allowed values."""
        return set(config) == set(self.keys) and all(config[k] in self.variant.space[k] for k in self.keys)

    def reason(self, config: Config) -> Optional[str]:
        """Why ``config`` cannot run the problem (the variant's constraints), or None."""
        try:
            full = self.variant.full_config(config)
        except (ValueError, TypeError) as exc:
            return str(exc)
        return self.variant.config_reason(full, self.problem)

    def points(self) -> Iterator[Config]:
        """Every point of the space, constraints not applied, the default config first."""
        default = self.default
        yield dict(default)
        for values in itertools.product(*(self.variant.space[key] for key in self.keys)):
            config = dict(zip(self.keys, values))
            if config != default:
                yield config

    @functools.cached_property
    def valid_points(self) -> Optional[list[Config]]:
        """The points that pass the constraints, default first; None for spaces too large to enumerate."""
        if self.size > ENUMERATE_LIMIT:
            return None
        return [c for c in self.points() if self.reason(c) is None]

    @property
    def valid_size(self) -> int:
        """How many points pass the constraints (the whole size when the space is too large to count)."""
        valid = self.valid_points
        return self.size if valid is None else len(valid)


# ---------------------------------------------------------------------------------------------- shapes

_SHAPE = re.compile(r"^\s*(\d+)x(\d+)x(\d+)x(\d+)(?:x(\d+))?(?:/(\d+))?\s*$")


def parse_shape(text: str) -> dict[str, int]:
    """"BxTxHxK[xV][/block]" -> {"B", "T", "H", "K", "V", "block_size"} (V = K, block = K by default).

    >>> parse_shape("2x4096x16x128")
    {'B': 2, 'T': 4096, 'H': 16, 'K': 128, 'V': 128, 'block_size': 128}
    """
    match = _SHAPE.match(text)
    if not match:
        raise ValueError(f"shape: expected BxTxHxK[xV][/block_size] (e.g. 4x4096x16x128), got {text!r}")
    B, T, H, K = (int(match.group(i)) for i in range(1, 5))
    V = int(match.group(5)) if match.group(5) else K
    block = int(match.group(6)) if match.group(6) else K
    if min(B, T, H, K, V, block) <= 0:
        raise ValueError(f"shape: every dimension must be positive, got {text!r}")
    if K % block:
        raise ValueError(f"shape: block size {block} does not divide K={K} in {text!r}")
    return {"B": B, "T": T, "H": H, "K": K, "V": V, "block_size": block}


def parse_int_list(text: str, name: str) -> list[int]:
    """"512,1K,16K" -> [512, 1024, 16384] (a K suffix multiplies by 1024)."""
    values = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        scale = 1024 if part[-1] in "kK" else 1
        digits = part[:-1] if scale > 1 else part
        if not digits.isdigit() or int(digits) <= 0:
            raise ValueError(f"{name}: expected positive integers like 512,1K,16K, got {text!r}")
        values.append(int(digits) * scale)
    if not values:
        raise ValueError(f"{name}: no value in {text!r}")
    return values


def paper_shapes(tokens: int, hidden: int, lengths: list[int], head_dims: list[int]) -> list[dict[str, int]]:
    """The paper's grid: B*T = ``tokens`` and H*D = ``hidden`` for every T in ``lengths``, D in ``head_dims``."""
    shapes = []
    for D in head_dims:
        if hidden % D:
            raise ValueError(f"D: head dim {D} does not divide H*D={hidden}")
        for T in lengths:
            if tokens % T:
                raise ValueError(f"T: {T} does not divide the token count {tokens}")
            shapes.append({"B": tokens // T, "T": T, "H": hidden // D, "K": D, "V": D, "block_size": D})
    return shapes


def describe_shape(shape: dict[str, Any]) -> str:
    s = f"{shape['B']}x{shape['T']}x{shape['H']}x{shape['K']}"
    if shape["V"] != shape["K"]:
        s += f"x{shape['V']}"
    if shape.get("block_size", shape["K"]) != shape["K"]:
        s += f"/{shape['block_size']}"
    return s
