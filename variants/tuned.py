"""Exported tuning results, as the op reads them (files written by ``deltalab export``).

Where results come from, for the device a call runs on:

* files shipped in the package, ``variants/configs/<device-slug>.json`` (GPUs only: the file of the
  current GPU's slug, e.g. ``nvidia-h200.json``);
* the user's file, folder of ``*.json`` files, or ``os.pathsep``-separated list of them, named by the
  environment variable ``DELTALAB_TUNED_CONFIGS``; its entries take precedence over shipped ones.

A file applies only when it was made on the same device (name and compute capability) with the same
Triton version; any other file is ignored with one warning (``warnings.warn``, once per file and
reason), and so is a malformed one. Files are read once per process (per device and value of the
environment variable; ``clear_cache`` forgets them); a call then costs a dictionary lookup -- nothing
is tuned or timed at call time.

File format (``SCHEMA_VERSION`` 1)::

    {"schema_version": 1,
     "device": {"name": "NVIDIA H200", "slug": "nvidia-h200", "compute_capability": "9.0"},
     "triton": "3.6.0", "torch": "2.11.0", "deltalab": "0.1.0", "created": "...",
     "entries": [{"family": "delta_rule", "variant": "chunk", "dtype": "bfloat16", "K": 128, "V": 128,
                  "block_size": 128, "chunk_size": 64, "T_bucket": 4096, "mode": "fwd+bwd",
                  "B": 4, "T": 4096, "H": 16, "config": {...}, "median_ms": 0.41,
                  "default_median_ms": 0.52, "speedup_vs_default": 1.27, ...}, ...]}

Lookup: entries of the same family, dtype, K, V and block size; the nearest sequence-length bucket
(powers of two, distance in log2; ``seq_bucket``) wins, then the measurement that matches the call
(``MODE_PREFERENCE``: "fwd+bwd" first for a call that will be differentiated, "fwd" first for one that
will not), then the nearest B*H. A config that no longer fits the variant's space or the problem's
constraints is skipped.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import torch

from .registry import Config, Problem, Variant

SCHEMA_VERSION = 1
ENV_VAR = "DELTALAB_TUNED_CONFIGS"
SHIPPED_DIR = Path(__file__).resolve().parent / "configs"
# which measurements describe a call best: the whole training step for a call that will be differentiated
# (grad=True), the forward alone for one that will not (inference); the other kind next
MODE_PREFERENCE = {True: ("fwd+bwd", "fwd", "bwd"), False: ("fwd", "fwd+bwd", "bwd")}

_WARNED: set[tuple[str, str]] = set()


# ---------------------------------------------------------------------------------------------- identity


@dataclass(frozen=True)
class DeviceIdentity:
    """What a tuning file must match: device name, its compute capability, and the Triton version."""

    name: str
    slug: str
    compute_capability: Optional[str]
    triton: Optional[str]

    def describe(self) -> str:
        cc = f" (sm {self.compute_capability})" if self.compute_capability else ""
        return f"{self.name}{cc}, triton {self.triton}"


def slugify(name: str) -> str:
    """A file-name-safe device name: "NVIDIA H200" -> "nvidia-h200" (as harness.env.gpu_slug)."""
    return re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-") or "cpu"


def _triton_version() -> Optional[str]:
    try:
        import triton

        return triton.__version__
    except Exception:  # noqa: BLE001 -- no (working) triton: no Triton version to match
        return None


@functools.lru_cache(maxsize=None)
def _identity_cached(device_type: str, index: Optional[int]) -> DeviceIdentity:
    triton_version = _triton_version()
    if device_type != "cuda":
        return DeviceIdentity("cpu", "cpu", None, triton_version)
    props = torch.cuda.get_device_properties(index)
    return DeviceIdentity(props.name, slugify(props.name), f"{props.major}.{props.minor}", triton_version)


def device_identity(device: Any = "cuda") -> DeviceIdentity:
    """The identity of ``device`` ("cuda", "cuda:1", a torch.device, or "cpu")."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():  # a CUDA problem described on a CPU machine
        return _identity_cached("cpu", None)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _identity_cached("cuda", index)


def seq_bucket(length: float) -> int:
    """The power of two at or above ``length`` (1 for lengths <= 1): the bucket tuned configs key on."""
    return 1 << max(0, math.ceil(math.log2(max(float(length), 1.0))))


def problem_length(problem: Problem) -> float:
    """The sequence length a problem is looked up by: T, or the mean packed length for varlen batches."""
    return problem.tokens / max(problem.num_seqs, 1) if problem.varlen else float(problem.T)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# ---------------------------------------------------------------------------------------------- reading


def _warn_once(path: Path, reason: str) -> None:
    key = (str(path), reason)
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(f"deltalab: ignoring tuned configs {path}: {reason}", stacklevel=3)


def read_file(path: Path) -> dict:
    """A tuning file's JSON, checked for the fields the lookup needs; ValueError says what is wrong."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read it ({exc})") from None
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        got = data.get("schema_version") if isinstance(data, dict) else None
        raise ValueError(f"schema_version {got!r}, expected {SCHEMA_VERSION}")
    device = data.get("device")
    if not isinstance(device, dict) or "name" not in device:
        raise ValueError("no device name")
    entries = data.get("entries")
    if not isinstance(entries, list):
        raise ValueError("no list of entries")
    required = ("family", "variant", "dtype", "K", "V", "block_size", "T_bucket", "config", "median_ms")
    for i, entry in enumerate(entries):
        missing = [key for key in required if not isinstance(entry, dict) or key not in entry]
        if missing:
            raise ValueError(f"entry {i} lacks {', '.join(missing)}")
        if not isinstance(entry["config"], dict):
            raise ValueError(f"entry {i}: config is not an object")
    return data


def mismatch(data: dict, ident: DeviceIdentity) -> Optional[str]:
    """Why a file's results do not apply on ``ident`` (another device or Triton version), or None."""
    device = data["device"]
    if device.get("name") != ident.name:
        return f"made on {device.get('name')!r}, this device is {ident.name!r}"
    cc = device.get("compute_capability")
    if cc != ident.compute_capability:
        return f"made for compute capability {cc}, this device has {ident.compute_capability}"
    if data.get("triton") != ident.triton:
        return f"made with triton {data.get('triton')}, this is triton {ident.triton}"
    return None


def _user_files(value: str) -> list[Path]:
    files: list[Path] = []
    for part in value.split(os.pathsep):
        if not part:
            continue
        path = Path(part).expanduser()
        if path.is_dir():
            files.extend(sorted(path.glob("*.json")))
        elif path.exists():
            files.append(path)
        else:
            _warn_once(path, f"{ENV_VAR} names a path that does not exist")
    return files


def _entry_key(entry: dict) -> tuple:
    return tuple(entry.get(k) for k in ("family", "variant", "dtype", "K", "V", "block_size", "mode", "T_bucket", "B", "H"))


@dataclass(frozen=True)
class _Table:
    """The applicable entries, indexed by (family, dtype, K, V, block_size)."""

    index: dict[tuple, tuple[dict, ...]]
    files: tuple[str, ...]


@functools.lru_cache(maxsize=16)
def _load(ident: DeviceIdentity, env_value: Optional[str]) -> _Table:
    files: list[Path] = []
    if ident.slug != "cpu":  # shipped results are GPU results
        shipped = SHIPPED_DIR / f"{ident.slug}.json"
        if shipped.exists():
            files.append(shipped)
    if env_value:
        files.extend(_user_files(env_value))
    merged: dict[tuple, dict] = {}  # later files (the user's) override earlier (shipped) ones
    used = []
    for path in files:
        try:
            data = read_file(path)
        except ValueError as exc:
            _warn_once(path, str(exc))
            continue
        why = mismatch(data, ident)
        if why is not None:
            _warn_once(path, why)
            continue
        used.append(str(path))
        for entry in data["entries"]:
            merged[_entry_key(entry)] = entry
    index: dict[tuple, list[dict]] = {}
    for entry in merged.values():
        key = (entry["family"], entry["dtype"], int(entry["K"]), int(entry["V"]), int(entry["block_size"]))
        index.setdefault(key, []).append(entry)
    return _Table({k: tuple(v) for k, v in index.items()}, tuple(used))


def _table(problem: Problem) -> _Table:
    return _load(device_identity(problem.device), os.environ.get(ENV_VAR) or None)


def loaded_files(device: Any = "cuda") -> tuple[str, ...]:
    """The tuning files that apply on ``device`` (for diagnostics)."""
    return _load(device_identity(device), os.environ.get(ENV_VAR) or None).files


def clear_cache() -> None:
    """Forget the files read so far (tests; after writing a new export in the same process)."""
    _load.cache_clear()
    _lookup_cached.cache_clear()
    _best_variant_cached.cache_clear()
    _identity_cached.cache_clear()


# ---------------------------------------------------------------------------------------------- lookup


def _rank(entry: dict, length: float, heads_batch: int, grad: bool = True) -> tuple:
    """Sort key of an entry for a problem: bucket distance, mode preference (``grad``: the call will be
    differentiated), B*H distance, then stable."""
    bucket = int(entry["T_bucket"])
    mode = entry.get("mode", "fwd")
    preference = MODE_PREFERENCE[grad]
    mode_rank = preference.index(mode) if mode in preference else len(preference)
    bh = int(entry.get("B") or 1) * int(entry.get("H") or 1)
    return (
        abs(math.log2(bucket) - math.log2(seq_bucket(length))),
        bucket,  # equal distance: the shorter bucket
        mode_rank,
        abs(math.log2(bh) - math.log2(max(heads_batch, 1))),
        json.dumps(entry["config"], sort_keys=True),
    )


def _usable_config(variant: Variant, entry: dict, problem: Problem) -> Optional[Config]:
    """The entry's config if it still fits the variant's space and the problem's constraints."""
    config = dict(entry["config"])
    try:
        full = variant.full_config(config)
    except (ValueError, TypeError) as exc:
        _warn_once(Path(f"<entry {entry['variant']} {entry['dtype']} K={entry['K']} V={entry['V']}>"), str(exc))
        return None
    if variant.config_reason(full, problem) is not None:
        return None
    return config


def _ranked_entries(problem: Problem, family: str, variant_name: Optional[str], grad: bool = True) -> list[dict]:
    table = _table(problem)
    key = (family, dtype_name(problem.dtype), problem.K, problem.V, problem.block_size)
    entries = [e for e in table.index.get(key, ()) if variant_name is None or e["variant"] == variant_name]
    length = problem_length(problem)
    heads_batch = problem.num_seqs * problem.H
    return sorted(entries, key=lambda e: _rank(e, length, heads_batch, grad))


@functools.lru_cache(maxsize=4096)
def _lookup_cached(ident: DeviceIdentity, env_value: Optional[str], variant_key: tuple, problem: Problem,
                   grad: bool) -> Optional[tuple]:
    from . import registry

    family, name, _ = variant_key
    variant = registry.get(name, family)
    for entry in _ranked_entries(problem, family, name, grad):
        config = _usable_config(variant, entry, problem)
        if config is not None:
            return tuple(sorted(config.items()))
    return None


def lookup_config(variant: Variant, problem: Problem, grad: bool = True) -> Optional[Config]:
    """The exported best config of ``variant`` for ``problem`` on this device, or None (``grad``: the call
    will be differentiated, so fwd+bwd measurements come first; else forward-only ones)."""
    ident = device_identity(problem.device)
    env_value = os.environ.get(ENV_VAR) or None
    if not _load(ident, env_value).index:
        return None
    # id(variant): a test may unregister a variant and register another under the same name
    found = _lookup_cached(ident, env_value, (variant.family, variant.name, id(variant)), problem, grad)
    return None if found is None else dict(found)


def best_variant(problem: Problem, family: str, incumbent: Optional[str] = None, grad: bool = True) -> Optional[str]:
    """The variant with the lowest recorded time for ``problem``'s bucket among those that can run it --
    forward and backward when the call will be differentiated (``grad``: a variant whose backward refuses
    the problem, ``Variant.backward_limit``, would break training), else forward.

    Only entries in the nearest bucket that any usable entry has are compared (times measured on
    different sequence lengths are not comparable), in the preferred measurement mode (fwd+bwd with
    ``grad``, else fwd); ties by name.
    With ``incumbent`` (auto's rule choice), results that hold no entry of it in that comparison say
    nothing about beating it: None then (an export of a partly finished tuning run naming only
    "recurrent" at some head dim must not turn auto from "chunk" to a 6x slower variant).
    """
    from . import registry

    ident = device_identity(problem.device)
    env_value = os.environ.get(ENV_VAR) or None
    if not _load(ident, env_value).index:
        return None
    registered = tuple(id(v) for v in registry.variants(family))  # the answer depends on what is registered
    return _best_variant_cached(ident, env_value, family, problem, registered, incumbent, grad)


@functools.lru_cache(maxsize=4096)
def _best_variant_cached(ident: DeviceIdentity, env_value: Optional[str], family: str, problem: Problem,
                         registered: tuple, incumbent: Optional[str], grad: bool) -> Optional[str]:
    from . import registry

    entries = _ranked_entries(problem, family, None, grad)
    if not entries:
        return None
    length = problem_length(problem)
    heads_batch = problem.num_seqs * problem.H
    usable: list[tuple[tuple, float, str]] = []
    for entry in entries:
        try:
            variant = registry.get(entry["variant"], family)
        except ValueError:
            continue  # results of a variant this build does not have
        if variant.unsupported_reason(problem) is not None:
            continue
        if grad and variant.backward_unsupported_reason(problem) is not None:
            continue
        if _usable_config(variant, entry, problem) is None:
            continue
        rank = _rank(entry, length, heads_batch, grad)
        usable.append(((rank[0], rank[1], rank[2]), float(entry["median_ms"]), entry["variant"]))
    if not usable:
        return None
    nearest = min(u[0] for u in usable)
    compared = [(ms, name) for key, ms, name in usable if key == nearest]
    if incumbent is not None and all(name != incumbent for _, name in compared):
        return None
    return min(compared)[1]


def entries_for(problem: Problem, family: str, variant_name: str, paths: Iterable[Path] = (),
                grad: bool = True) -> list[dict]:
    """Entries of ``variant_name`` matching ``problem``'s family, dtype, K, V and block size from the
    applicable files and from ``paths`` (read regardless of device or Triton version: the tuner's warm
    start uses earlier results as starting points only), nearest bucket first, then the measurement mode
    ``grad`` prefers (see ``MODE_PREFERENCE``)."""
    found = list(_ranked_entries(problem, family, variant_name, grad))
    key = (family, dtype_name(problem.dtype), problem.K, problem.V, problem.block_size)
    for path in paths:
        try:
            data = read_file(Path(path))
        except ValueError:
            continue
        for entry in data["entries"]:
            if (entry["family"], entry["dtype"], int(entry["K"]), int(entry["V"]), int(entry["block_size"])) == key \
                    and entry["variant"] == variant_name:
                found.append(entry)
    length, heads_batch = problem_length(problem), problem.num_seqs * problem.H
    return sorted(found, key=lambda e: _rank(e, length, heads_batch, grad))
