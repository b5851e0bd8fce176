"""Read the harness's sweep output into one pandas table (and tuning studies / tuner exports).

A sweep folder holds ``results.json`` (one record per variant x shape x mode x dtype, with the raw
``samples_ms``), ``results.csv`` (the same rows without samples), ``environment.json`` (GPU, versions,
date) and ``ceilings.json`` (measured copy bandwidth and matmul rates). ``load_results`` accepts folders
or result files, fills what older or partial files lack (tokens/s, floor ratio, defaults), and keeps
which file each row came from. Rows whose status is not "ok" stay in the table; ``Results.ok`` and
``Results.not_ok`` split them for plotting and for the table of skipped/failed cases.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import pandas as pd

PathLike = Union[str, Path]

# The sweep/regress row schema (see the harness contract); samples_ms is kept in JSON only.
RESULT_COLUMNS = (
    "variant", "family", "mode", "dtype", "B", "T", "H", "K", "V", "block_size", "config", "status",
    "reason", "median_ms", "mean_ms", "std_ms", "min_ms", "cv", "n_samples", "samples_ms", "tokens_per_s",
    "tflops", "gbps", "floor_ms", "floor_ratio", "gpu", "torch", "triton", "deltalab", "git_commit", "date",
)  # fmt: skip
SHAPE_COLUMNS = ("B", "T", "H", "K", "V", "block_size")
FLOAT_COLUMNS = (
    "median_ms", "mean_ms", "std_ms", "min_ms", "cv", "n_samples", "tokens_per_s", "tflops", "gbps",
    "floor_ms", "floor_ratio",
)  # fmt: skip
ENV_COLUMNS = ("gpu", "torch", "triton", "deltalab", "git_commit", "date")
REQUIRED_COLUMNS = ("variant", "B", "T", "H", "K", "V")
MODES = ("fwd", "fwd+bwd", "bwd")  # display order
# Rows describing one measurement: a later file's row replaces an earlier one with the same key.
ROW_KEY = ("label", "family", "mode", "dtype", *SHAPE_COLUMNS)


@dataclass
class Results:
    """All rows of one report, plus the environment and ceilings of each source file.

    ``rows`` has the schema's columns plus ``source`` (the file it came from), ``head_dim`` (the panel
    label: "128", or "K64/V100" when K != V) and ``label`` (the series name: the variant, with the GPU
    appended when the rows come from several GPUs).
    """

    rows: pd.DataFrame
    environments: list[dict] = field(default_factory=list)
    ceilings: list[dict] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> pd.DataFrame:
        """Rows measured successfully (status "ok" with a finite median): the ones plotted."""
        return self.rows[self.rows["status"] == "ok"]

    @property
    def not_ok(self) -> pd.DataFrame:
        """Skipped and failed rows, with their reasons: shown as a table, never plotted."""
        return self.rows[self.rows["status"] != "ok"]

    @property
    def interpreted(self) -> bool:
        """True when any source ran under Triton's CPU interpreter (its times say nothing about a GPU)."""
        return any(env.get("interpreter") in (True, "true", "True") for env in self.environments)

    @property
    def synthetic(self) -> bool:
        """True when any source says it is synthetic sample data rather than a measurement."""
        return any("synthetic" in str(env.get("gpu", "")).lower() or env.get("synthetic") for env in self.environments)


# --------------------------------------------------------------------------------------------- results
def resolve_results_file(path: PathLike) -> Path:
    """The results file for ``path``: the file itself, or a sweep folder's results.json (else results.csv)."""
    p = Path(path)
    if p.is_dir():
        for name in ("results.json", "results.csv"):
            if (p / name).is_file():
                return p / name
        raise FileNotFoundError(f"RESULTS: folder {str(p)!r} holds neither results.json nor results.csv")
    if not p.exists():
        raise FileNotFoundError(f"RESULTS: no such file or folder: {str(p)!r}")
    if p.suffix.lower() not in (".json", ".csv"):
        raise ValueError(f"RESULTS: expected a sweep folder, a .json or a .csv file, got {str(p)!r}")
    return p


def _records_from_json(data: Any, where: str) -> tuple[list[dict], dict, dict]:
    """Rows (and an embedded environment/ceilings, when present) from any of pandas' JSON layouts."""
    env: dict = {}
    ceilings: dict = {}
    if isinstance(data, dict):
        env = data.get("environment") or {}
        ceilings = data.get("ceilings") or {}
        for key in ("rows", "results", "records"):
            if isinstance(data.get(key), list):
                return data[key], env, ceilings
        if isinstance(data.get("data"), list) and isinstance(data.get("columns"), list):  # orient="split"
            return [dict(zip(data["columns"], row)) for row in data["data"]], env, ceilings
        if isinstance(data.get("data"), list) and "schema" in data:  # orient="table"
            return data["data"], env, ceilings
        if data and all(isinstance(v, dict) for v in data.values()):  # orient="columns"
            return pd.DataFrame(data).to_dict(orient="records"), env, ceilings
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):  # orient="records"
        return data, env, ceilings
    raise ValueError(f"RESULTS: {where} is not a list of result rows (nor a pandas JSON table)")


def _read_json_file(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what}: {str(path)!r} is not valid JSON ({exc})") from None


def _optional_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    data = _read_json_file(path, "RESULTS")
    return data if isinstance(data, dict) else {}


def _config_string(value: Any) -> str:
    """Configs as canonical JSON strings (dicts from JSON files, strings from CSV files)."""
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return "{}"
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return value
        return json.dumps(parsed, sort_keys=True) if isinstance(parsed, dict) else value
    return str(value)


def _read_one(path: Path) -> tuple[pd.DataFrame, dict, dict]:
    """One results file as a normalised frame, with its environment and ceilings."""
    env = _optional_json(path.parent / "environment.json")
    ceilings = _optional_json(path.parent / "ceilings.json")
    if path.suffix.lower() == ".json":
        records, embedded_env, embedded_ceilings = _records_from_json(_read_json_file(path, "RESULTS"), str(path))
        env = {**embedded_env, **env}
        ceilings = {**embedded_ceilings, **ceilings}
        frame = pd.DataFrame.from_records(records)
    else:
        frame = pd.read_csv(path, keep_default_na=True)
    return normalise_rows(frame, source=str(path)), env, ceilings


def normalise_rows(frame: pd.DataFrame, source: str = "") -> pd.DataFrame:
    """Fill a raw results frame up to the full schema: defaults, numeric types, derived columns.

    Missing ``tokens_per_s`` is B*T / median; missing ``floor_ratio`` is median / floor. An "ok" row
    without a finite positive median becomes "failed" ("no timing recorded"), so that nothing unplottable
    is plotted.
    """
    if frame.empty:
        raise ValueError(f"RESULTS: {source or 'the results'} holds no rows")
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"RESULTS: {source or 'the results'} lacks the column(s) {', '.join(missing)}")
    df = frame.copy()
    defaults = {"family": "delta_rule", "mode": "fwd", "dtype": "bfloat16", "status": "ok", "reason": ""}
    for column in RESULT_COLUMNS:
        if column not in df.columns:
            df[column] = defaults.get(column)
    for column, default in defaults.items():
        df[column] = df[column].fillna(default).astype(str)
    df["dtype"] = df["dtype"].str.replace("torch.", "", regex=False)
    df["status"] = df["status"].str.strip().str.lower()
    df["reason"] = df["reason"].replace("nan", "")
    df["variant"] = df["variant"].astype(str)
    df["config"] = [_config_string(c) for c in df["config"]]
    for column in SHAPE_COLUMNS:
        df[column] = pd.to_numeric(df[column], errors="coerce")
    df["block_size"] = df["block_size"].fillna(df["K"])
    if df[list(SHAPE_COLUMNS)].isna().any().any():
        raise ValueError(f"RESULTS: {source or 'the results'} has rows without a numeric B, T, H, K or V")
    df[list(SHAPE_COLUMNS)] = df[list(SHAPE_COLUMNS)].astype("int64")
    for column in FLOAT_COLUMNS:
        df[column] = pd.to_numeric(df[column], errors="coerce").astype("float64")

    untimed = (df["status"] == "ok") & ~(df["median_ms"] > 0)
    df.loc[untimed, "status"] = "failed"
    df.loc[untimed & (df["reason"] == ""), "reason"] = "no timing recorded"

    seconds = df["median_ms"] / 1e3
    df["tokens_per_s"] = df["tokens_per_s"].fillna(df["B"] * df["T"] / seconds)
    df["floor_ratio"] = df["floor_ratio"].fillna(df["median_ms"] / df["floor_ms"].where(df["floor_ms"] > 0))
    df["source"] = source
    df["head_dim"] = [str(k) if k == v else f"K{k}/V{v}" for k, v in zip(df["K"], df["V"])]
    return df


def _environment_with_row_fields(env: dict, rows: pd.DataFrame) -> dict:
    """environment.json, with fields it lacks taken from the rows themselves (rows carry gpu, versions...)."""
    merged = dict(env)
    for column in ENV_COLUMNS:
        if merged.get(column) in (None, ""):
            values = rows[column].dropna().astype(str)
            values = values[values != ""]
            if len(values):
                merged[column] = values.iloc[0]
    return merged


def load_results(paths: Iterable[PathLike]) -> Results:
    """Load sweep folders / results files into one ``Results``; later paths win on duplicate rows."""
    frames: list[pd.DataFrame] = []
    environments: list[dict] = []
    ceilings: list[dict] = []
    sources: list[str] = []
    for path in paths:
        file = resolve_results_file(path)
        frame, env, ceil = _read_one(file)
        frames.append(frame)
        env = _environment_with_row_fields(env, frame)
        env.setdefault("source", str(file))
        environments.append(env)
        ceilings.append(ceil)
        sources.append(str(file))
    if not frames:
        raise ValueError("RESULTS: no results given")
    rows = pd.concat(frames, ignore_index=True)
    # A row without its own GPU/version fields inherits its source's environment.
    for env, source in zip(environments, sources):
        mine = rows["source"] == source
        for column in ENV_COLUMNS:
            if env.get(column) not in (None, ""):
                rows.loc[mine & rows[column].isna(), column] = str(env[column])

    gpus = rows["gpu"].fillna("unknown GPU").astype(str)
    several_gpus = gpus.nunique() > 1
    rows["label"] = [f"{v} ({g})" if several_gpus else v for v, g in zip(rows["variant"], gpus)]

    notes: list[str] = []
    key = list(ROW_KEY)
    is_ok = rows["status"] == "ok"
    duplicated = is_ok & rows[is_ok].duplicated(subset=key, keep="last").reindex(rows.index, fill_value=False)
    if duplicated.any():
        notes.append(
            f"{int(duplicated.sum())} measurement(s) appeared more than once; the one from the later "
            "results file is shown."
        )
        rows = rows[~duplicated].reset_index(drop=True)
    return Results(rows=rows, environments=environments, ceilings=ceilings, sources=sources, notes=notes)


# ------------------------------------------------------------------------------------ environment text
def environment_caption(environments: Iterable[dict]) -> str:
    """One line naming GPU, versions and date of each distinct environment, for figure titles."""
    parts: list[str] = []
    for env in environments:
        text = env_line(env)
        if text not in parts:
            parts.append(text)
    return "; ".join(parts) or "environment not recorded"


def env_line(env: dict) -> str:
    """'NVIDIA H200 · torch 2.11 · triton 3.6.0 · deltalab 0.1.0 · 2026-11-29 · abc1234' (what is known)."""
    pieces = [str(env.get("gpu") or env.get("device") or "GPU not recorded")]
    for name in ("torch", "triton", "deltalab"):
        if env.get(name):
            pieces.append(f"{name} {env[name]}")
    if env.get("interpreter") in (True, "true", "True"):
        pieces.append("Triton CPU interpreter (not GPU timings)")
    if env.get("date"):
        pieces.append(str(env["date"])[:10])
    if env.get("git_commit"):
        pieces.append(f"commit {str(env['git_commit'])[:10]}")
    return " · ".join(pieces)


# ------------------------------------------------------------------------------------ tuning studies
def optuna_storage(url: str):
    """An Optuna storage from a URL or path: ``journal:PATH`` or ``*.log`` -> JournalStorage (file),
    ``*.db`` / ``*.sqlite`` path -> SQLite, anything else as an RDB URL (sqlite:///..., postgresql://...).
    """
    import optuna

    if not url:
        raise ValueError("--storage: empty storage URL")
    if url.startswith("journal:") or url.endswith(".log"):
        from optuna.storages.journal import JournalFileBackend

        path = url[len("journal:") :] if url.startswith("journal:") else url
        if not Path(path).is_file():
            raise FileNotFoundError(f"--storage: no journal file at {path!r}")
        return optuna.storages.JournalStorage(JournalFileBackend(path))
    if "://" not in url:
        if not Path(url).is_file():
            raise FileNotFoundError(f"--storage: no such study database {url!r}")
        return f"sqlite:///{Path(url).resolve()}"
    return url


def load_studies(storage: str, names: Optional[Iterable[str]] = None) -> list:
    """The named Optuna studies from ``storage`` (every study there when ``names`` is empty)."""
    import optuna

    store = optuna_storage(storage)
    available = optuna.study.get_all_study_names(storage=store)
    wanted = list(names or []) or list(available)
    if not wanted:
        raise ValueError(f"--storage: {storage!r} holds no studies")
    unknown = [n for n in wanted if n not in available]
    if unknown:
        raise ValueError(
            f"--study: no study named {', '.join(map(repr, unknown))} in {storage!r} "
            f"(studies there: {', '.join(available) or 'none'})"
        )
    return [optuna.load_study(study_name=name, storage=store) for name in wanted]


def load_tuned_export(path: PathLike) -> dict:
    """A tuner export (versioned JSON of best configs) with its entries flattened to one row per
    (variant, dtype, head dims, sequence-length bucket): the result's ``"rows"`` key.

    Accepts entries that hold a per-bucket mapping (under ``buckets``/``configs``/``by_T``/``T_buckets``,
    T -> {config, median_ms, speedup...}) or that are already flat (``T``/``T_bucket``/``bucket``).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--tuned: no such file {str(p)!r}")
    data = _read_json_file(p, "--tuned")
    entries = data.get("entries") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ValueError(f"--tuned: {str(p)!r} has no list of entries")
    rows: list[dict] = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        buckets = next(
            (entry[k] for k in ("buckets", "configs", "by_T", "T_buckets", "t_buckets") if isinstance(entry.get(k), dict)),
            None,
        )
        base = {k: v for k, v in entry.items() if not isinstance(v, dict) or k == "config"}
        if buckets is None:
            rows.append(_tuned_row(base, entry.get("T_bucket", entry.get("bucket", entry.get("T")))))
            continue
        for bucket, info in buckets.items():
            info = info if isinstance(info, dict) else {"config": info}
            if "config" not in info:  # the bucket value is itself the config
                info = {"config": info}
            rows.append(_tuned_row({**base, **info}, bucket))
    meta = {k: v for k, v in data.items() if k != "entries"} if isinstance(data, dict) else {}
    return {**meta, "rows": rows, "source": str(p)}


def _tuned_row(entry: dict, bucket: Any) -> dict:
    speedup = next((entry[k] for k in ("speedup", "speedup_over_default", "speed_up", "speedup_vs_default") if k in entry), None)
    return {
        "variant": entry.get("variant", "?"),
        "family": entry.get("family", "delta_rule"),
        "dtype": str(entry.get("dtype", "")).replace("torch.", ""),
        "K": entry.get("K"),
        "V": entry.get("V"),
        "block_size": entry.get("block_size"),
        "mode": entry.get("mode", ""),
        "T_bucket": bucket,
        "config": _config_string(entry.get("config")),
        "median_ms": entry.get("median_ms"),
        "default_median_ms": entry.get("default_median_ms", entry.get("default_ms")),
        "speedup": speedup,
    }
