"""Performance-regression checks against a recorded baseline (``deltalab regress``).

A *baseline* file (JSON, ``SCHEMA_VERSION``) holds the environment it was measured in and a list of
*cases* -- variant, family, mode, dtype, shape, config -- each with its recorded timing samples (ms).
A regression check re-measures every case on this GPU and decides per case, with statistics:

1. Measuring: ``rounds`` interleaved rounds; each round times every case once (``rep_ms`` of samples,
   after ``warmup_ms``), in an order shuffled per round, so slow drift of the machine (clocks, heat,
   neighbours) spreads over all cases instead of landing on the last ones. Baselines are recorded the
   same way.
2. Deciding (``compare``): ratio = median(current) / median(baseline) with a percentile-bootstrap
   confidence interval (``deltalab.harness.stats``, fixed seed). A case is
   * "noisy" when either sample's robust CV exceeds ``max_cv`` (or has fewer than ``min_samples``
     samples) -- reported, never failed;
   * "regression" when the whole interval lies above 1 + ``min_effect``;
   * "improvement" when the whole interval lies below 1 - ``min_effect``;
   * "unchanged" otherwise;
   * "error" when the case could not be measured (variant gone, exception, OOM).
3. Refusing: a baseline from another GPU or another Triton version is not compared
   (``EnvironmentMismatch``) unless the caller allows it.

Exit status of ``deltalab regress`` (``run_cli``): 0 no regression, 1 a regression or an error case,
2 refused (mismatched environment, unreadable baseline, no GPU).

Writers: a rich table, a JSON document (``--json``), JUnit XML (``--junit``: one testcase per case,
regressions as failures, errors as errors, noisy cases as skipped), a Markdown summary (``--markdown``,
e.g. for $GITHUB_STEP_SUMMARY) and a sweep-style results folder (``--out``) that ``deltalab report`` reads.

Testing hook: ``ReplayMeasure`` replays recorded samples instead of timing anything. ``deltalab regress
--replay FILE`` (hidden option; also the environment variable DELTALAB_REGRESS_REPLAY) uses it: FILE is
in the baseline format; its ``environment``, when present, stands in for this machine's. It lets the
whole command run on a CPU-only machine in tests; it is not meant for real checks.
"""

from __future__ import annotations

import csv
import json
import math
import random
import re
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from . import stats

SCHEMA_VERSION = 1
MODES = ("fwd", "bwd", "fwd+bwd")
DTYPE_NAMES = ("float64", "float32", "float16", "bfloat16")
VERDICTS = ("regression", "improvement", "unchanged", "noisy", "error")
# environment fields whose difference makes timings incomparable (refused unless allowed)
BLOCKING_FIELDS = ("gpu", "triton", "interpreter")
# environment fields whose difference is reported but does not block the comparison
NOTED_FIELDS = ("compute_capability", "torch", "cuda", "driver", "sm_count")

# (case, round index) -> timing samples in ms of that round
Measure = Callable[["Case", int], Sequence[float]]


# ---------------------------------------------------------------------------------------------- cases
@dataclass
class Case:
    """One timed configuration: which implementation, which pass, which shape, and its samples (ms).

    ``config`` None means "whatever the op picks" (exported tuned config, else the variant's default),
    i.e. what users get; a dict pins the tunable settings.
    """

    variant: str
    family: str
    mode: str
    dtype: str
    B: int
    T: int
    H: int
    K: int
    V: int
    block_size: int
    config: Optional[dict[str, Any]] = None
    samples_ms: list[float] = field(default_factory=list)

    def key(self) -> str:
        """Identity of the case (everything but the samples), used to match baseline and measurements."""
        config = json.dumps(self.config, sort_keys=True) if self.config else "default"
        return (
            f"{self.family}/{self.variant}/{self.mode}/{self.dtype}/"
            f"B{self.B}-T{self.T}-H{self.H}-K{self.K}-V{self.V}-bs{self.block_size}/{config}"
        )

    def label(self) -> str:
        """Short human-readable name, e.g. ``chunk fwd bfloat16 B=4 T=4096 H=16 K=128 V=128``."""
        text = f"{self.variant} {self.mode} {self.dtype} B={self.B} T={self.T} H={self.H} K={self.K} V={self.V}"
        if self.family != "delta_rule":
            text = f"{self.family}:{text} block={self.block_size}"
        if self.config:
            text += " " + ",".join(f"{k}={v}" for k, v in sorted(self.config.items()))
        return text

    def problem(self, device: str = "cuda"):
        """The registry ``Problem`` of this case on ``device``."""
        import torch

        from deltalab.variants.registry import Problem

        return Problem(
            B=self.B,
            T=self.T,
            H=self.H,
            K=self.K,
            V=self.V,
            dtype=getattr(torch, self.dtype),
            block_size=self.block_size,
            device=device,
        )

    def to_dict(self, samples: bool = True) -> dict[str, Any]:
        data = asdict(self)
        if not samples:
            data.pop("samples_ms")
        return data

    @classmethod
    def from_dict(cls, data: Any, where: str = "case") -> "Case":
        """Parse and validate one case; ValueError naming ``where`` and the field on bad content."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
        missing = [name for name in ("variant", "mode", "dtype", "B", "T", "H", "K", "V") if name not in data]
        if missing:
            raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
        mode = data["mode"]
        if mode not in MODES:
            raise ValueError(f"{where}.mode: must be one of {MODES}, got {mode!r}")
        dtype = str(data["dtype"]).replace("torch.", "")
        if dtype not in DTYPE_NAMES:
            raise ValueError(f"{where}.dtype: must be one of {DTYPE_NAMES}, got {data['dtype']!r}")
        dims = {}
        for name in ("B", "T", "H", "K", "V"):
            value = data[name]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{where}.{name}: must be a positive integer, got {value!r}")
            dims[name] = value
        block_size = data.get("block_size") or dims["K"]
        if not isinstance(block_size, int) or dims["K"] % block_size:
            raise ValueError(f"{where}.block_size: must be an integer dividing K={dims['K']}, got {block_size!r}")
        config = data.get("config")
        if isinstance(config, str):  # result rows carry the config as a JSON string
            try:
                config = json.loads(config) if config.strip() else None
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}.config: not a JSON object ({exc})") from None
        if config is not None and not isinstance(config, dict):
            raise ValueError(f"{where}.config: must be an object or null, got {type(config).__name__}")
        samples = data.get("samples_ms") or []
        if not isinstance(samples, list):
            raise ValueError(f"{where}.samples_ms: must be a list of numbers, got {type(samples).__name__}")
        if samples:
            stats.as_samples(samples, f"{where}.samples_ms")
        return cls(
            variant=str(data["variant"]),
            family=str(data.get("family") or "delta_rule"),
            mode=mode,
            dtype=dtype,
            block_size=block_size,
            config=config or None,
            samples_ms=[float(x) for x in samples],
            **dims,
        )


def default_cases(
    variants: Sequence[str] = ("chunk", "recurrent"),
    head_dims: Sequence[int] = (64, 128, 256),
    seq_len: int = 4096,
    tokens: int = 16384,
    hidden: int = 2048,
    modes: Sequence[str] = ("fwd", "fwd+bwd"),
    dtype: str = "bfloat16",
    family: str = "delta_rule",
) -> tuple[list[Case], list[str]]:
    """The paper's speed-up setting at one sequence length: B = tokens / T, H = hidden / D, K = V = D.

    Returns (cases, skipped): variants that are not registered, or cannot run a shape on CUDA, are left
    out and named in ``skipped``.
    """
    from deltalab.variants import registry

    if tokens % seq_len:
        raise ValueError(f"tokens: must be a multiple of the sequence length {seq_len}, got {tokens}")
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"modes: each must be one of {MODES}, got {mode!r}")
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"dtype: must be one of {DTYPE_NAMES}, got {dtype!r}")
    known = set(registry.names(family))
    cases: list[Case] = []
    skipped: list[str] = []
    for name in variants:
        if name not in known:
            skipped.append(f"{name}: not registered")
            continue
        variant = registry.get(name, family)
        for dim in head_dims:
            if hidden % dim:
                raise ValueError(f"head_dims: {dim} does not divide hidden={hidden}")
            shape = dict(B=tokens // seq_len, T=seq_len, H=hidden // dim, K=dim, V=dim)
            for mode in modes:
                case = Case(name, family, mode, dtype, block_size=dim, **shape)
                reason = variant.unsupported_reason(case.problem("cuda"))
                if reason is None and mode != "fwd":
                    reason = variant.backward_unsupported_reason(case.problem("cuda"))
                if reason is not None:
                    skipped.append(f"{case.label()}: {reason}")
                    continue
                cases.append(case)
    return cases, skipped


# ------------------------------------------------------------------------------------------- baseline
@dataclass
class Baseline:
    """A baseline file: where it was measured, how, and the cases with their samples."""

    environment: dict[str, Any]
    cases: list[Case]
    settings: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "environment": self.environment,
            "settings": self.settings,
            "cases": [case.to_dict() for case in self.cases],
        }


def parse_baseline(data: Any, source: str = "baseline", require_samples: bool = True) -> Baseline:
    """Validate a baseline document (already parsed from JSON); ValueError naming ``source`` and field."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a JSON object with schema_version, environment, cases")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ValueError(f"{source}: schema_version {version!r} is not supported (this deltalab reads {SCHEMA_VERSION})")
    environment = data.get("environment")
    if not isinstance(environment, dict) or "gpu" not in environment:
        raise ValueError(f"{source}.environment: must be an object with at least 'gpu' (and 'triton')")
    raw_cases = data.get("cases")
    if not isinstance(raw_cases, list) or not raw_cases:
        raise ValueError(f"{source}.cases: must be a non-empty list")
    cases = [Case.from_dict(item, f"{source}.cases[{i}]") for i, item in enumerate(raw_cases)]
    seen: dict[str, int] = {}
    for i, case in enumerate(cases):
        if require_samples and not case.samples_ms:
            raise ValueError(f"{source}.cases[{i}].samples_ms: no recorded samples for {case.label()}")
        if case.key() in seen:
            raise ValueError(f"{source}.cases[{i}]: duplicate of cases[{seen[case.key()]}] ({case.label()})")
        seen[case.key()] = i
    settings = data.get("settings") or {}
    if not isinstance(settings, dict):
        raise ValueError(f"{source}.settings: must be an object")
    return Baseline(environment=environment, cases=cases, settings=settings, schema_version=version)


def load_baseline(path: str | Path, require_samples: bool = True) -> Baseline:
    """Read and validate a baseline JSON file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(
            f"baseline: file {str(path)!r} does not exist (record one on the GPU it is for with "
            f"`deltalab regress --write-baseline {path}`)"
        ) from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"baseline: {str(path)!r} is not valid JSON ({exc})") from None
    return parse_baseline(data, source=str(path), require_samples=require_samples)


def save_baseline(baseline: Baseline, path: str | Path) -> Path:
    """Write ``baseline`` as indented JSON (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(baseline.to_dict(), indent=1) + "\n")
    return path


def gpu_slug(gpu_name: Optional[str] = None) -> str:
    """File-name form of a GPU name ("NVIDIA H200" -> "nvidia-h200"); this machine's GPU when None."""
    if gpu_name is None:
        import torch

        gpu_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-") or "unknown"


# ---------------------------------------------------------------------------------------- environment
class EnvironmentMismatch(ValueError):
    """The baseline was measured on another GPU / Triton version: timings are not comparable."""


def environment_differences(baseline_env: dict, current_env: dict) -> tuple[list[str], list[str]]:
    """(blocking, noted) differences between two environments, as "field: baseline -> current" lines.

    Blocking: GPU model, Triton version, interpreter mode (a field missing on either side is not compared).
    Noted only: compute capability, torch, CUDA, driver, SM count.
    """

    def diff(fields):
        lines = []
        for name in fields:
            if name in baseline_env and name in current_env and baseline_env[name] != current_env[name]:
                lines.append(f"{name}: {baseline_env[name]!r} -> {current_env[name]!r}")
        return lines

    return diff(BLOCKING_FIELDS), diff(NOTED_FIELDS)


def check_environment(baseline_env: dict, current_env: dict, allow_mismatch: bool = False) -> list[str]:
    """Raise EnvironmentMismatch on a blocking difference (unless allowed); returns every difference."""
    blocking, noted = environment_differences(baseline_env, current_env)
    if blocking and not allow_mismatch:
        raise EnvironmentMismatch(
            "baseline: measured in another environment, timings are not comparable ("
            + "; ".join(blocking)
            + "). Record a baseline on this machine (deltalab regress --write-baseline FILE) "
            "or pass --allow-mismatch to compare anyway."
        )
    return blocking + noted


# ------------------------------------------------------------------------------------------ measuring
def measure_interleaved(
    cases: Sequence[Case],
    measure: Measure,
    *,
    rounds: int,
    seed: int = 0,
    progress: Optional[Callable[[Case, int], None]] = None,
) -> list[tuple[list[float], Optional[str]]]:
    """Time every case in ``rounds`` rounds, each round in a freshly shuffled case order.

    Returns, per case (in the order given), (samples in ms, error text or None). A case whose
    measurement raises is recorded with the error and not measured again; its samples are dropped.
    ``progress(case, round_index)`` is called after each measurement.
    """
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds: must be a positive integer, got {rounds!r}")
    order_rng = random.Random(seed)
    samples: list[list[float]] = [[] for _ in cases]
    errors: list[Optional[str]] = [None] * len(cases)
    for round_index in range(rounds):
        order = list(range(len(cases)))
        order_rng.shuffle(order)
        for i in order:
            if errors[i] is None:
                try:
                    got = [float(x) for x in measure(cases[i], round_index)]
                    if got:  # a round may yield nothing (a short replay); what it yields must be sane
                        stats.as_samples(got, "measured samples")
                    samples[i].extend(got)
                except Exception as exc:  # one broken case (exception, OOM) never aborts the others
                    errors[i] = f"{type(exc).__name__}: {exc}"
                    samples[i] = []
            if progress is not None:
                progress(cases[i], round_index)
    return list(zip(samples, errors))


class TimingMeasure:
    """Times cases on this machine with ``deltalab.harness.timing`` (CUDA events, L2 flushed).

    Each case's inputs and closure (``timing.make_runner``) are built on first use and kept, so later
    rounds time exactly the same call; ``close()`` frees them.
    """

    def __init__(self, warmup_ms: float = 25.0, rep_ms: float = 100.0, device: Optional[str] = None):
        self.warmup_ms = warmup_ms
        self.rep_ms = rep_ms
        self.device = device
        self._runners: dict[str, Callable[[], object]] = {}

    def __call__(self, case: Case, round_index: int) -> list[float]:
        from deltalab.harness import timing

        runner = self._runners.get(case.key())
        if runner is None:
            runner = timing.make_runner(
                case.variant,
                case.problem(self.device or "cuda"),
                case.config,
                case.mode,
                family=case.family,
                device=self.device,
            )
            self._runners[case.key()] = runner
        try:
            result = timing.benchmark(runner, warmup_ms=self.warmup_ms, rep_ms=self.rep_ms, device=self.device)
        except Exception:
            # a failed case is not measured again: free its inputs so they cannot starve the others
            del self._runners[case.key()]
            self._free_cache()
            raise
        return list(result.samples_ms)

    def close(self) -> None:
        self._runners.clear()
        self._free_cache()

    @staticmethod
    def _free_cache() -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class ReplayMeasure:
    """Testing hook: answers measurements from recorded samples instead of timing anything.

    The file is in the baseline format (``environment`` optional; cases need samples_ms). A case's
    samples are split evenly over the ``rounds`` rounds. A case absent from the file, or one carrying
    ``"error": "text"``, raises -- which the check reports as an "error" case.
    """

    def __init__(self, path: str | Path, rounds: int):
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"replay: cannot read {str(path)!r} ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
            raise ValueError(f"replay: {str(path)!r} must be a JSON object with a 'cases' list")
        self.environment: Optional[dict] = data.get("environment")
        self.rounds = rounds
        self._samples: dict[str, list[float]] = {}
        self._errors: dict[str, str] = {}
        for i, item in enumerate(data["cases"]):
            case = Case.from_dict(item, f"replay.cases[{i}]")
            if isinstance(item, dict) and item.get("error"):
                self._errors[case.key()] = str(item["error"])
            else:
                self._samples[case.key()] = case.samples_ms

    def __call__(self, case: Case, round_index: int) -> list[float]:
        key = case.key()
        if key in self._errors:
            raise RuntimeError(self._errors[key])
        if key not in self._samples:
            raise KeyError(f"no recorded samples for {case.label()}")
        parts = np.array_split(np.asarray(self._samples[key]), self.rounds)
        return parts[round_index].tolist()


# ------------------------------------------------------------------------------------------- deciding
@dataclass
class Settings:
    """How cases are measured and judged."""

    min_effect: float = 0.05
    max_cv: float = 0.10
    confidence: float = 0.95
    resamples: int = 2000
    seed: int = 0
    min_samples: int = 5
    rounds: int = 5
    warmup_ms: float = 25.0
    rep_ms: float = 100.0

    def validate(self) -> "Settings":
        if not 0.0 <= self.min_effect < 1.0:
            raise ValueError(f"min_effect: must be in [0, 1), got {self.min_effect}")
        if not self.max_cv > 0.0:
            raise ValueError(f"max_cv: must be positive, got {self.max_cv}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence: must lie strictly between 0 and 1, got {self.confidence}")
        if self.resamples < 100:
            raise ValueError(f"resamples: need at least 100, got {self.resamples}")
        if self.min_samples < 2:
            raise ValueError(f"min_samples: need at least 2, got {self.min_samples}")
        if self.rounds < 1:
            raise ValueError(f"rounds: must be a positive integer, got {self.rounds}")
        if self.warmup_ms < 0 or self.rep_ms <= 0:
            raise ValueError(f"warmup_ms, rep_ms: need warmup_ms >= 0 and rep_ms > 0, got {self.warmup_ms}, {self.rep_ms}")
        return self


@dataclass
class Comparison:
    """The statistics and verdict of one case (times in ms, CVs robust)."""

    verdict: str
    reason: str
    ratio: float
    ci_low: float
    ci_high: float
    baseline_median_ms: float
    current_median_ms: float
    baseline_cv: float
    current_cv: float
    baseline_n: int
    current_n: int


def verdicts(ci_low, ci_high, baseline_cv, current_cv, baseline_n, current_n, settings: Settings) -> np.ndarray:
    """The decision rule, vectorised over cases (arrays of one shape in, an object array of verdicts out).

    noisy (too few samples, or a robust CV above max_cv on either side) beats everything; then
    regression (interval above 1 + min_effect), improvement (below 1 - min_effect), else unchanged.
    """
    low, high = np.asarray(ci_low, dtype=np.float64), np.asarray(ci_high, dtype=np.float64)
    out = np.full(low.shape, "unchanged", dtype=object)
    out[high < 1.0 - settings.min_effect] = "improvement"
    out[low > 1.0 + settings.min_effect] = "regression"
    too_few = np.minimum(baseline_n, current_n) < settings.min_samples
    too_noisy = np.maximum(baseline_cv, current_cv) > settings.max_cv
    out[np.asarray(too_few | too_noisy)] = "noisy"
    return out


def compare_batch(current, baseline, settings: Optional[Settings] = None) -> dict[str, np.ndarray]:
    """Judge many cases at once: ``current`` [N, n] against ``baseline`` [N, m] (equal sample counts
    within each side). Returns arrays ratio, ci_low, ci_high, baseline_cv, current_cv and verdict."""
    settings = settings or Settings()
    cur = stats.as_samples(current, "current")
    base = stats.as_samples(baseline, "baseline")
    low, high = stats.bootstrap_ratio_ci(
        cur, base, confidence=settings.confidence, resamples=settings.resamples, seed=settings.seed
    )
    base_cv, cur_cv = stats.robust_cv(base), stats.robust_cv(cur)
    shape = np.shape(low)
    return {
        "ratio": np.asarray(stats.median_ratio(cur, base)),
        "ci_low": np.asarray(low),
        "ci_high": np.asarray(high),
        "baseline_cv": np.asarray(base_cv),
        "current_cv": np.asarray(cur_cv),
        "verdict": verdicts(
            low, high, base_cv, cur_cv, np.full(shape, base.shape[-1]), np.full(shape, cur.shape[-1]), settings
        ),
    }


def compare(current: Sequence[float], baseline: Sequence[float], settings: Optional[Settings] = None) -> Comparison:
    """Judge one case: noisy / regression / improvement / unchanged (see ``verdicts``)."""
    settings = settings or Settings()
    cur = stats.as_samples(current, "current")
    base = stats.as_samples(baseline, "baseline")
    if cur.ndim != 1 or base.ndim != 1:
        raise ValueError("current, baseline: one case's samples must be 1-D (use compare_batch for many)")
    result = compare_batch(cur, base, settings)
    ratio, low, high = float(result["ratio"]), float(result["ci_low"]), float(result["ci_high"])
    base_cv, cur_cv = float(result["baseline_cv"]), float(result["current_cv"])
    verdict = str(result["verdict"][()])
    interval = f"x{ratio:.3f} ({settings.confidence:.0%} CI {low:.3f}-{high:.3f})"
    if verdict == "noisy" and min(base.size, cur.size) < settings.min_samples:
        reason = f"too few samples to judge (baseline {base.size}, current {cur.size}; need {settings.min_samples})"
    elif verdict == "noisy":
        reason = f"too noisy to judge: CV baseline {base_cv:.1%}, current {cur_cv:.1%} (max {settings.max_cv:.0%})"
    elif verdict == "regression":
        reason = f"slower: {interval}, whole interval above 1 + {settings.min_effect:.0%}"
    elif verdict == "improvement":
        reason = f"faster: {interval}, whole interval below 1 - {settings.min_effect:.0%}"
    else:
        reason = f"{interval}: within the +-{settings.min_effect:.0%} minimum effect or not significant"
    return Comparison(
        verdict=verdict,
        reason=reason,
        ratio=ratio,
        ci_low=low,
        ci_high=high,
        baseline_median_ms=float(np.median(base)),
        current_median_ms=float(np.median(cur)),
        baseline_cv=base_cv,
        current_cv=cur_cv,
        baseline_n=int(base.size),
        current_n=int(cur.size),
    )


@dataclass
class CaseResult:
    """One case of a regression check: its current samples and the comparison (None on error)."""

    case: Case
    samples_ms: list[float]
    comparison: Optional[Comparison]
    error: Optional[str] = None

    @property
    def verdict(self) -> str:
        return "error" if self.comparison is None else self.comparison.verdict

    @property
    def reason(self) -> str:
        return self.error if self.comparison is None else self.comparison.reason


@dataclass
class Report:
    """The outcome of a regression check."""

    environment: dict[str, Any]
    baseline_environment: dict[str, Any]
    settings: Settings
    results: list[CaseResult]
    differences: list[str] = field(default_factory=list)
    ceilings: Optional[dict] = None  # roofline ceilings of this GPU, when measured (floor_ms in the rows)

    def counts(self) -> dict[str, int]:
        return {verdict: sum(r.verdict == verdict for r in self.results) for verdict in VERDICTS}

    @property
    def exit_code(self) -> int:
        """1 when any case regressed or could not be measured, else 0."""
        counts = self.counts()
        return 1 if counts["regression"] or counts["error"] else 0

    def rows(self) -> list[dict[str, Any]]:
        return [result_row(result, self.environment, self.settings, self.ceilings) for result in self.results]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "deltalab.regress",
            "environment": self.environment,
            "baseline_environment": self.baseline_environment,
            "environment_differences": self.differences,
            "settings": asdict(self.settings),
            "summary": {**self.counts(), "cases": len(self.results), "exit_code": self.exit_code},
            "rows": self.rows(),
        }


def run_regress(
    baseline: Baseline,
    measure: Measure,
    environment: dict[str, Any],
    settings: Optional[Settings] = None,
    *,
    allow_mismatch: bool = False,
    progress: Optional[Callable[[Case, int], None]] = None,
) -> Report:
    """Re-measure the baseline's cases with ``measure`` (interleaved rounds) and judge each one.

    Raises EnvironmentMismatch before measuring anything when the environments are not comparable.
    """
    settings = (settings or Settings()).validate()
    differences = check_environment(baseline.environment, environment, allow_mismatch)
    measured = measure_interleaved(
        baseline.cases, measure, rounds=settings.rounds, seed=settings.seed, progress=progress
    )
    results = []
    for case, (samples, error) in zip(baseline.cases, measured):
        if error is None and not samples:
            error = "no samples measured"
        comparison = None if error else compare(samples, case.samples_ms, settings)
        results.append(CaseResult(case=case, samples_ms=samples, comparison=comparison, error=error))
    return Report(environment, baseline.environment, settings, results, differences)


def record_baseline(
    cases: Sequence[Case],
    measure: Measure,
    environment: dict[str, Any],
    settings: Optional[Settings] = None,
    *,
    progress: Optional[Callable[[Case, int], None]] = None,
) -> tuple[Baseline, list[str]]:
    """Measure ``cases`` (interleaved rounds) into a new Baseline; returns (baseline, failed cases)."""
    settings = (settings or Settings()).validate()
    measured = measure_interleaved(cases, measure, rounds=settings.rounds, seed=settings.seed, progress=progress)
    return baseline_from(cases, measured, environment, settings)


def baseline_from(
    cases: Sequence[Case],
    measured: Sequence[tuple[Sequence[float], Optional[str]]],
    environment: dict[str, Any],
    settings: Settings,
) -> tuple[Baseline, list[str]]:
    """A Baseline of ``cases`` with their ``measured`` (samples, error) pairs; returns (baseline, failed).

    Cases that failed to measure are left out and listed as "label: error".
    """
    kept, failed = [], []
    for case, (samples, error) in zip(cases, measured):
        if error or not samples:
            failed.append(f"{case.label()}: {error or 'no samples measured'}")
            continue
        kept.append(Case(**{**case.to_dict(samples=False), "samples_ms": [float(x) for x in samples]}))
    recorded = {name: getattr(settings, name) for name in ("rounds", "warmup_ms", "rep_ms", "seed")}
    return Baseline(environment=environment, cases=kept, settings=recorded), failed


# -------------------------------------------------------------------------------------------- writers
def _finite(value: Optional[float]) -> Optional[float]:
    return None if value is None or not math.isfinite(value) else float(value)


def _throughput(case: Case, median_ms: float, ceilings: Optional[dict]) -> dict[str, Optional[float]]:
    """tokens/s; TFLOP/s and GB/s from the variant's cost model in this mode; the roofline floor and
    median / floor when ``ceilings`` (``roofline.measure_ceilings``) are known."""
    fields: dict[str, Optional[float]] = {
        "tokens_per_s": case.B * case.T / (median_ms * 1e-3),
        "tflops": None,
        "gbps": None,
        "floor_ms": None,
        "floor_ratio": None,
    }
    try:
        from deltalab.harness.roofline import achieved, floor_ms, mode_cost
        from deltalab.variants import registry

        problem = case.problem()
        cost = mode_cost(registry.get(case.variant, case.family), problem, case.config, case.mode)
        fields.update(achieved(cost, median_ms))
        if ceilings:
            fields["floor_ms"] = floor_ms(cost, ceilings, problem.dtype)
            fields["floor_ratio"] = median_ms / fields["floor_ms"] if fields["floor_ms"] > 0 else None
    except Exception:  # a variant gone or a config no longer valid: the row keeps its timings
        pass
    return fields


def result_row(
    result: CaseResult, environment: dict[str, Any], settings: Settings, ceilings: Optional[dict] = None
) -> dict[str, Any]:
    """One result row in the shared sweep/regress schema plus the regression fields."""
    case = result.case
    samples = np.asarray(result.samples_ms, dtype=np.float64)
    ok = result.comparison is not None and samples.size > 0
    row: dict[str, Any] = {
        "variant": case.variant,
        "family": case.family,
        "mode": case.mode,
        "dtype": case.dtype,
        "B": case.B,
        "T": case.T,
        "H": case.H,
        "K": case.K,
        "V": case.V,
        "block_size": case.block_size,
        "config": json.dumps(case.config or {}, sort_keys=True),
        "status": "ok" if ok else "failed",
        "reason": "" if ok else (result.error or ""),
        "median_ms": float(np.median(samples)) if ok else None,
        "mean_ms": float(samples.mean()) if ok else None,
        "std_ms": float(samples.std(ddof=1)) if ok and samples.size > 1 else (0.0 if ok else None),
        "min_ms": float(samples.min()) if ok else None,
        "cv": stats.coefficient_of_variation(samples) if ok else None,
        "n_samples": int(samples.size),
        "samples_ms": [float(x) for x in samples],
    }
    throughput = _throughput(case, row["median_ms"], ceilings) if ok else dict.fromkeys(
        ("tokens_per_s", "tflops", "gbps", "floor_ms", "floor_ratio")
    )
    row.update(throughput)
    for name in ("gpu", "torch", "triton", "deltalab", "git_commit", "date"):
        row[name] = environment.get(name)
    comparison = result.comparison
    row.update(
        verdict=result.verdict,
        verdict_reason=result.reason,
        ratio=_finite(comparison.ratio) if comparison else None,
        ci_low=_finite(comparison.ci_low) if comparison else None,
        ci_high=_finite(comparison.ci_high) if comparison else None,
        baseline_median_ms=comparison.baseline_median_ms if comparison else _median_or_none(case.samples_ms),
        baseline_n=len(case.samples_ms),
        robust_cv=comparison.current_cv if comparison else None,
        baseline_robust_cv=comparison.baseline_cv if comparison else None,
        min_effect=settings.min_effect,
        confidence=settings.confidence,
    )
    return row


def _median_or_none(samples: Sequence[float]) -> Optional[float]:
    return float(np.median(samples)) if len(samples) else None


def write_json(report: Report, path: str | Path) -> Path:
    """The whole report (environment, settings, summary, rows with samples) as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    return path


def write_junit(report: Report, path: str | Path) -> Path:
    """JUnit XML: one testcase per case; regression -> failure, error -> error, noisy -> skipped."""
    counts = report.counts()
    suite = ET.Element(
        "testsuite",
        name="deltalab.regress",
        tests=str(len(report.results)),
        failures=str(counts["regression"]),
        errors=str(counts["error"]),
        skipped=str(counts["noisy"]),
        time=f"{sum(sum(r.samples_ms) for r in report.results) / 1e3:.3f}",
    )
    properties = ET.SubElement(suite, "properties")
    for name in ("gpu", "triton", "torch", "deltalab", "git_commit", "date"):
        ET.SubElement(properties, "property", name=name, value=str(report.environment.get(name)))
    ET.SubElement(properties, "property", name="baseline_gpu", value=str(report.baseline_environment.get("gpu")))
    ET.SubElement(
        properties, "property", name="baseline_git_commit", value=str(report.baseline_environment.get("git_commit"))
    )
    for result in report.results:
        case = result.case
        comparison = result.comparison
        testcase = ET.SubElement(
            suite,
            "testcase",
            classname=f"deltalab.regress.{case.family}.{case.variant}",
            name=case.label(),
            time=f"{(comparison.current_median_ms if comparison else 0.0) / 1e3:.6f}",
        )
        if result.verdict == "regression":
            failure = ET.SubElement(testcase, "failure", message=result.reason, type="PerformanceRegression")
            failure.text = _details(result)
        elif result.verdict == "error":
            error = ET.SubElement(testcase, "error", message=result.reason, type="MeasurementError")
            error.text = result.reason
        elif result.verdict == "noisy":
            ET.SubElement(testcase, "skipped", message=result.reason)
        else:
            ET.SubElement(testcase, "system-out").text = _details(result)
    root = ET.Element("testsuites", name="deltalab regress")
    root.append(suite)
    ET.indent(root)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path


def _details(result: CaseResult) -> str:
    c = result.comparison
    if c is None:
        return result.reason
    return (
        f"{result.verdict}: {result.reason}\n"
        f"baseline median {c.baseline_median_ms:.4f} ms (n={c.baseline_n}, robust CV {c.baseline_cv:.1%}); "
        f"current median {c.current_median_ms:.4f} ms (n={c.current_n}, robust CV {c.current_cv:.1%})"
    )


def write_markdown(report: Report, path: str | Path) -> Path:
    """A Markdown summary table (e.g. appended to $GITHUB_STEP_SUMMARY); appends when the file exists."""
    counts = report.counts()
    lines = [
        "## deltalab regress",
        "",
        f"GPU {report.environment.get('gpu')}, triton {report.environment.get('triton')}, "
        f"torch {report.environment.get('torch')}, commit {report.environment.get('git_commit')} "
        f"against baseline commit {report.baseline_environment.get('git_commit')} "
        f"({report.baseline_environment.get('date')}).",
        "",
        ", ".join(f"{counts[v]} {v}" for v in VERDICTS),
        "",
        "| case | baseline ms | current ms | ratio | CI | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for result in report.results:
        c = result.comparison
        if c is None:
            lines.append(f"| {result.case.label()} | - | - | - | - | **error**: {result.reason} |")
            continue
        verdict = f"**{result.verdict}**" if result.verdict == "regression" else result.verdict
        lines.append(
            f"| {result.case.label()} | {c.baseline_median_ms:.4f} | {c.current_median_ms:.4f} | "
            f"{c.ratio:.3f} | {c.ci_low:.3f}-{c.ci_high:.3f} | {verdict} |"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


CSV_SKIP = ("samples_ms",)


def write_results_folder(report: Report, folder: str | Path) -> Path:
    """A sweep-style folder for ``deltalab report``: results.json (rows with samples), results.csv
    (rows without samples), environment.json, and ceilings.json when the report has ceilings."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = report.rows()
    (folder / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    columns = [name for name in rows[0] if name not in CSV_SKIP] if rows else []
    with (folder / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (folder / "environment.json").write_text(json.dumps(report.environment, indent=1) + "\n")
    if report.ceilings:
        (folder / "ceilings.json").write_text(json.dumps(report.ceilings, indent=1) + "\n")
    return folder


SHORT_DTYPE = {"float64": "fp64", "float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
VERDICT_STYLE = {
    "regression": "bold red",
    "improvement": "green",
    "unchanged": "",
    "noisy": "yellow",
    "error": "bold magenta",
}


def render_table(report: Report):
    """A rich Table of the cases: verdict (coloured), ratio and interval, medians, CVs, shape.

    The most important columns come first so that a narrow terminal crops the least useful ones; the
    reasons of error cases are not in the table (``run_cli`` prints them below it).
    """
    from rich.table import Table

    table = Table(
        title=f"deltalab regress on {report.environment.get('gpu')} "
        f"(min effect {report.settings.min_effect:.0%}, {report.settings.confidence:.0%} bootstrap CI)"
    )
    table.add_column("case", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    for column in ("ratio", "CI", "base ms", "now ms", "CV base/now"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("shape")  # the one column that may wrap on a narrow terminal
    for result in report.results:
        case, c = result.case, result.comparison
        name = case.variant if case.family == "delta_rule" else f"{case.family}:{case.variant}"
        dims = f"D{case.K}" if case.K == case.V else f"K{case.K}/V{case.V}"
        name = f"{name} {dims}"
        shape = f"{case.B}x{case.T} H{case.H} {SHORT_DTYPE.get(case.dtype, case.dtype)}"
        if case.block_size != case.K:
            shape += f" bs{case.block_size}"
        if case.config:
            shape += " " + ",".join(f"{k}={v}" for k, v in sorted(case.config.items()))
        style = VERDICT_STYLE[result.verdict]
        verdict = f"[{style}]{result.verdict}[/]" if style else result.verdict
        if c is None:
            table.add_row(f"{name} {case.mode}", verdict, "-", "-", "-", "-", "-", shape)
            continue
        table.add_row(
            f"{name} {case.mode}",
            verdict,
            f"{c.ratio:.3f}",
            f"{c.ci_low:.3f}-{c.ci_high:.3f}",
            f"{c.baseline_median_ms:.4f}",
            f"{c.current_median_ms:.4f}",
            f"{c.baseline_cv:.1%}/{c.current_cv:.1%}",
            shape,
        )
    return table


# ------------------------------------------------------------------------------------------ command
def _current_environment() -> dict[str, Any]:
    from deltalab.harness.env import environment

    return environment()


def run_cli(
    console,
    *,
    baseline_path: Optional[Path] = None,
    write_baseline_path: Optional[Path] = None,
    settings: Optional[Settings] = None,
    explicit: Sequence[str] = (),
    allow_mismatch: bool = False,
    json_path: Optional[Path] = None,
    junit_path: Optional[Path] = None,
    markdown_path: Optional[Path] = None,
    out_dir: Optional[Path] = None,
    case_options: Optional[dict[str, Any]] = None,
    replay_path: Optional[Path] = None,
) -> int:
    """The ``deltalab regress`` command: returns its exit status (0 ok, 1 regression/error, 2 refused).

    ``explicit`` names the measuring settings (rounds, warmup_ms, rep_ms) given on the command line;
    the others are taken from the baseline's recorded settings so both sides are measured alike.
    ``case_options`` are ``default_cases`` keywords, used when recording a baseline without --baseline.
    """
    settings = settings or Settings()
    if baseline_path is None and write_baseline_path is None:
        console.print("[red]regress: give --baseline FILE (check) and/or --write-baseline FILE (record)[/]")
        return 2
    baseline = None
    if baseline_path is not None:
        try:
            baseline = load_baseline(baseline_path)
        except ValueError as exc:
            console.print(f"[red]{exc}[/]")
            return 2
        for name in ("rounds", "warmup_ms", "rep_ms"):
            if name not in explicit and name in baseline.settings:
                setattr(settings, name, type(getattr(settings, name))(baseline.settings[name]))
    try:
        settings.validate()
    except ValueError as exc:
        console.print(f"[red]regress: {exc}[/]")
        return 2

    if replay_path is not None:
        try:
            replay = ReplayMeasure(replay_path, settings.rounds)
        except ValueError as exc:
            console.print(f"[red]{exc}[/]")
            return 2
        measure: Measure = replay
        environment = replay.environment or _current_environment()
        console.print(f"[yellow]regress: replaying recorded samples from {replay_path} (testing hook; nothing is timed)[/]")
    else:
        import torch

        from deltalab.variants.common import triton_interpreting

        if not torch.cuda.is_available() or triton_interpreting():
            console.print(
                "[red]regress: needs a CUDA GPU with compiled Triton kernels (no GPU, or TRITON_INTERPRET=1): "
                "timings from the CPU interpreter say nothing about kernel speed[/]"
            )
            return 2
        measure = TimingMeasure(settings.warmup_ms, settings.rep_ms)
        environment = _current_environment()

    if baseline is not None:
        cases = baseline.cases
    else:
        try:
            cases, skipped = default_cases(**(case_options or {}))
        except ValueError as exc:
            console.print(f"[red]regress: {exc}[/]")
            return 2
        for line in skipped:
            console.print(f"[dim]skipped {line}[/]")
        if not cases:
            console.print("[red]regress: no case to measure (are the variants registered?)[/]")
            return 2

    from rich.progress import Progress

    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("measuring (interleaved rounds)", total=len(cases) * settings.rounds)

        def progress(case: Case, round_index: int) -> None:
            bar.update(task, advance=1, description=f"round {round_index + 1}/{settings.rounds}: {case.label()}")

        try:
            if baseline is not None:
                report = run_regress(
                    baseline, measure, environment, settings, allow_mismatch=allow_mismatch, progress=progress
                )
                measured = [(r.samples_ms, r.error) for r in report.results]
            else:
                report = None
                measured = measure_interleaved(
                    cases, measure, rounds=settings.rounds, seed=settings.seed, progress=progress
                )
        except EnvironmentMismatch as exc:
            console.print(f"[red]{exc}[/]")
            return 2
        finally:
            if isinstance(measure, TimingMeasure):
                measure.close()

    exit_code = 0
    if report is not None:
        if out_dir and replay_path is None:
            report.ceilings = _ceilings()
        # CI logs are not terminals: print the table wide instead of folding it into 80 columns
        table_console = console
        if not console.is_terminal and console.width < 160:
            from rich.console import Console

            table_console = Console(file=console.file, width=160, no_color=console.no_color, highlight=False)
        table_console.print(render_table(report))
        for result in report.results:
            if result.verdict in ("error", "noisy"):
                table_console.print(f"{result.verdict}: {result.case.label()}: {result.reason}")
        if report.differences:
            console.print("[yellow]environment differences (baseline -> current): " + "; ".join(report.differences) + "[/]")
        counts = report.counts()
        console.print(", ".join(f"{counts[v]} {v}" for v in VERDICTS))
        if json_path:
            console.print(f"wrote {write_json(report, json_path)}")
        if junit_path:
            console.print(f"wrote {write_junit(report, junit_path)}")
        if markdown_path:
            console.print(f"wrote {write_markdown(report, markdown_path)}")
        if out_dir:
            console.print(f"wrote {write_results_folder(report, out_dir)}")
        exit_code = report.exit_code

    if write_baseline_path is not None:
        new_baseline, failed = baseline_from(cases, measured, environment, settings)
        for line in failed:
            console.print(f"[red]not recorded (measurement failed): {line}[/]")
        if not new_baseline.cases:
            console.print("[red]regress: no case could be measured; baseline not written[/]")
            return 2
        path = save_baseline(new_baseline, write_baseline_path)
        console.print(f"wrote baseline {path} ({len(new_baseline.cases)} cases on {environment.get('gpu')})")
        if failed:
            exit_code = max(exit_code, 1)
    return exit_code


def _ceilings() -> Optional[dict]:
    """The roofline ceilings of this GPU for the results folder (None when not measurable)."""
    try:
        from deltalab.harness.roofline import measure_ceilings

        return measure_ceilings()
    except Exception:  # the folder is still useful without ceilings
        return None
