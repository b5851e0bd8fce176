"""``deltalab export``: the winners of the studies in a storage as versioned JSON the op loads.

One file per device (name, compute capability) and Triton version, in the format documented in
``deltalab.variants.tuned`` (``SCHEMA_VERSION``). An entry per study that has a valid config: the
winner of its interleaved re-timing (``selection``), or, for a study that was never selected, its
fastest trial; with its median time, the default config's, and the speed-up over it. Only configs that
passed the numerics check are ever exported (invalid trials are never COMPLETE with status "ok").

Where files go: GPU results to ``variants/configs/<device-slug>.json`` (shipped with the package), CPU
results to ``out/configs/cpu.json`` (the package ships GPU results only); ``out`` overrides (a file for
one device, or a folder). An existing file of the same device and Triton version is merged (new
entries replace entries of the same key); one of another device or Triton version is replaced.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import optuna
from optuna.trial import TrialState

from deltalab.variants import registry, tuned

from .space import config_key
from .study import METADATA_KEY, SELECTION_KEY

CPU_DEFAULT_DIR = Path("out") / "configs"


@dataclass
class ExportedFile:
    path: Path
    device: dict
    triton: Optional[str]
    entries: list[dict] = field(default_factory=list)
    merged: int = 0  # entries kept from the existing file
    replaced_existing: Optional[str] = None  # why an existing file was replaced instead of merged


def _deltalab_version() -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version("deltalab")
    except metadata.PackageNotFoundError:
        return None


def study_entry(study: optuna.Study) -> Optional[dict]:
    """The export entry of one deltalab study (None when it has no valid config or no metadata)."""
    meta = study.user_attrs.get(METADATA_KEY)
    if not isinstance(meta, dict):
        return None
    ok = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get("status") == "ok" and t.value is not None
    ]
    if not ok:
        return None
    invalid = sum(1 for t in study.get_trials(deepcopy=False) if t.user_attrs.get("status") == "invalid")
    ok_keys = {config_key(t.params): t for t in ok}
    default_key = config_key({k: meta["default_config"][k] for k in sorted(meta["default_config"])})
    selection = study.user_attrs.get(SELECTION_KEY)
    if isinstance(selection, dict) and selection.get("winner_key") in ok_keys:
        config = dict(selection["winner"])
        median_ms = float(selection["median_ms"])
        default_ms = selection.get("default_median_ms")
        selected_by = f"interleaved re-timing ({selection.get('rounds')} rounds)"
    else:
        best = min(ok, key=lambda t: (t.value, config_key(t.params)))
        config = dict(best.params)
        median_ms = float(best.value)
        default_trial = ok_keys.get(default_key)
        default_ms = default_trial.value if default_trial is not None else None
        selected_by = "fastest trial"
    try:
        registry.get(meta["variant"], meta["family"]).check_config(config)
    except ValueError:
        return None  # the variant's space changed since: the result no longer applies
    entry = {
        "family": meta["family"],
        "variant": meta["variant"],
        "dtype": meta["dtype"],
        "K": meta["K"],
        "V": meta["V"],
        "block_size": meta["block_size"],
        "T_bucket": tuned.seq_bucket(meta["T"]),
        "mode": meta["mode"],
        "B": meta["B"],
        "T": meta["T"],
        "H": meta["H"],
        "config": config,
        "median_ms": median_ms,
        "default_config": meta["default_config"],
        "default_median_ms": default_ms,
        "speedup_vs_default": (default_ms / median_ms) if default_ms and median_ms else None,
        "trials_ok": len(ok),
        "trials_invalid": invalid,
        "selected_by": selected_by,
        "study": study.study_name,
    }
    if "chunk_size" in config:
        entry["chunk_size"] = config["chunk_size"]
    return entry


def collect(storage, *, gpu: Optional[str] = None, variants: Optional[list[str]] = None) -> list[tuple[dict, dict]]:
    """(study metadata, entry) for every exportable study in ``storage`` (filtered by device slug and
    variant names)."""
    found = []
    for name in sorted(optuna.get_all_study_names(storage)):
        if not name.startswith("deltalab/"):
            continue
        study = optuna.load_study(study_name=name, storage=storage)
        meta = study.user_attrs.get(METADATA_KEY)
        if not isinstance(meta, dict):
            continue
        if gpu is not None and meta.get("device_slug") != tuned.slugify(gpu):
            continue
        if variants and meta.get("variant") not in variants:
            continue
        entry = study_entry(study)
        if entry is not None:
            found.append((meta, entry))
    return found


def _entry_key(entry: dict) -> tuple:
    return tuple(entry.get(k) for k in ("family", "variant", "dtype", "K", "V", "block_size", "mode", "T_bucket", "B", "H"))


def _sort_key(entry: dict) -> tuple:
    return tuple(str(x) if not isinstance(x, int) else f"{x:012d}" for x in _entry_key(entry))


def _target(out: Optional[Path], slug: str, groups: int) -> Path:
    if out is None:
        folder = CPU_DEFAULT_DIR if slug == "cpu" else tuned.SHIPPED_DIR
        return folder / f"{slug}.json"
    if out.is_dir() or str(out).endswith(("/", "\\")):
        return out / f"{slug}.json"
    if groups > 1:
        raise ValueError(
            f"out: {out} is one file, but the storage holds results of {groups} devices / Triton versions; "
            "pass --gpu to choose one, or a folder"
        )
    return out


def export(
    storage,
    out: Optional[Path] = None,
    *,
    gpu: Optional[str] = None,
    variants: Optional[list[str]] = None,
    merge: bool = True,
) -> list[ExportedFile]:
    """Write the studies' winners to JSON files (see the module docstring); returns what was written."""
    import torch

    groups: dict[tuple, list[tuple[dict, dict]]] = {}
    for meta, entry in collect(storage, gpu=gpu, variants=variants):
        key = (meta["device_name"], meta["device_slug"], meta.get("compute_capability"), meta.get("triton"))
        groups.setdefault(key, []).append((meta, entry))
    # one Triton version per device: the local one when the storage has several
    local_triton = tuned.device_identity("cpu").triton
    by_slug: dict[str, list[tuple]] = {}
    for key in groups:
        by_slug.setdefault(key[1], []).append(key)
    for slug, keys in by_slug.items():
        if len(keys) > 1:
            local = [k for k in keys if k[3] == local_triton]
            if not local:
                versions = ", ".join(sorted(str(k[3]) for k in keys))
                raise ValueError(f"storage: results for {slug} from several Triton versions ({versions}); "
                                 "export from a storage of one version")
            for k in keys:
                if k not in local:
                    del groups[k]

    written = []
    for (name, slug, cc, triton_version), items in sorted(groups.items(), key=lambda kv: kv[0][1]):
        path = _target(None if out is None else Path(out), slug, len(groups))
        entries = {_entry_key(e): e for _, e in items}
        result = ExportedFile(path=path, device={"name": name, "slug": slug, "compute_capability": cc}, triton=triton_version)
        if merge and path.exists():
            try:
                old = tuned.read_file(path)
                ident = tuned.DeviceIdentity(name, slug, cc, triton_version)
                why = tuned.mismatch(old, ident)
            except ValueError as exc:
                old, why = None, str(exc)
            if why is None and old is not None:
                for e in old["entries"]:
                    if _entry_key(e) not in entries:
                        entries[_entry_key(e)] = e
                        result.merged += 1
            else:
                result.replaced_existing = why
        result.entries = sorted(entries.values(), key=_sort_key)
        torch_versions = sorted({m.get("torch") for m, _ in items if m.get("torch")})
        data = {
            "schema_version": tuned.SCHEMA_VERSION,
            "generator": "deltalab export",
            "device": result.device,
            "triton": triton_version,
            "torch": torch_versions[-1] if torch_versions else torch.__version__,
            "deltalab": _deltalab_version(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "entries": result.entries,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
        tmp.replace(path)  # readers never see a half-written file
        written.append(result)
    tuned.clear_cache()
    return written
