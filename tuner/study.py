"""One tuning study: the search for the fastest correct config of one variant on one problem.

A study is an Optuna study in shared storage, named after what it measures (family, variant, device,
dtype, shape, mode, Triton version), so every worker tuning the same thing on the same kind of GPU
joins it. Workers drive it by ask/tell, a batch of configs at a time:

1. *ask* -- the sampler (strategies.py) proposes configs; queued ones come first (the warm start: the
   default config and configs from earlier exports; for "grid", every point of the space that passes
   the constraints);
2. *dedupe* -- a config that an earlier trial (lower number; finished, running or queued) already has is
   not run again: the trial is closed as FAIL with ``status="duplicate"`` and ``duplicate_of``
   (samplers ignore FAIL trials). The lowest-numbered trial of a config is its only owner, which holds
   across workers because trial numbers are handed out by the storage;
3. *constraints* -- the variant's ``config_reason`` (nothing compiles for a rejected config);
4. *precompile* -- the batch compiles in parallel in worker processes (precompile.py; no-op on CPU);
5. *numerics* -- forward and backward against the float64 reference (``harness.numerics``), on a
   problem of the same head dims and dtype, with at most ``check_max_T`` tokens per sequence;
6. *time* -- the harness timer (median over samples; ``mode`` "fwd", "bwd" or "fwd+bwd").

Invalid configs (constraint, compile, resources, numerics, crash, ...) are closed as PRUNED with user
attrs ``status="invalid"``, ``stage`` and ``reason``; valid ones COMPLETE with their median in ms and the
samples. Nothing invalid can win. A CUDA fault in this process (the context is unusable afterwards) is
recorded, then stops the worker (``DeviceFault``); rerunning resumes.

At the end the best ``top_k`` configs and the default are re-timed interleaved and the winner chosen
with the noise rule of select.py; the result is stored on the study (user attr ``selection``) for
``deltalab export``.
"""

from __future__ import annotations

import math
import os
import random
import socket
import statistics
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from deltalab.variants import registry, tuned
from deltalab.variants.registry import Problem, Variant

from .failures import DeviceFault, classify, exception_text
from .measure import HarnessTimer, Timer, harness_checker
from .precompile import Precompiler
from .select import Selection, interleaved_rounds, select_winner
from .space import SearchSpace, config_key
from .strategies import choose, make_sampler

MODES = ("fwd", "bwd", "fwd+bwd")
METADATA_KEY = "deltalab"
SELECTION_KEY = "selection"
MAX_SAMPLES_KEPT = 200

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


@dataclass
class TuneSettings:
    """How a study searches and measures (the CLI's options)."""

    mode: str = "fwd+bwd"
    trials: int = 64  # distinct valid configs per study, all workers together (grid: all valid points)
    sampler: str = "auto"
    seed: Optional[int] = None
    batch_size: int = 1  # configs asked, and precompiled, together
    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    check_max_T: int = 512
    select: bool = True
    top_k: int = 3
    rounds: int = 8
    round_warmup_ms: float = 5.0
    round_rep_ms: float = 25.0
    min_gain: float = 0.01
    warm_start: bool = True
    warm_start_paths: tuple = ()
    stale_after_s: float = 3600.0
    max_unproductive: int = 25  # consecutive batches with nothing new and valid: the search stops
    wait_for_others_s: float = 900.0  # before selecting, for other workers' running trials
    tag: str = ""  # appended to study names: separate experiments in one storage
    keys: tuple = ()  # search only these config keys (others at their defaults); empty: all

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {self.mode!r}")
        for name in ("trials", "batch_size", "top_k", "rounds", "check_max_T"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")


@dataclass
class StudyOutcome:
    """What a worker saw of one study when it finished with it."""

    study_name: str
    variant: str
    family: str
    problem: Problem
    mode: str
    strategy: str
    counts: dict[str, int] = field(default_factory=dict)  # ok / invalid / duplicate over the whole study
    ran_here: int = 0  # configs this worker evaluated
    best_config: Optional[dict] = None
    best_ms: Optional[float] = None
    default_ms: Optional[float] = None
    selection: Optional[Selection] = None
    invalid_stages: dict[str, int] = field(default_factory=dict)

    @property
    def winner(self) -> Optional[dict]:
        return self.selection.winner if self.selection else self.best_config

    @property
    def winner_ms(self) -> Optional[float]:
        return self.selection.median_ms if self.selection else self.best_ms

    @property
    def speedup(self) -> Optional[float]:
        if self.selection is not None:
            return self.selection.speedup
        if self.default_ms and self.best_ms:
            return self.default_ms / self.best_ms
        return None


# ---------------------------------------------------------------------------------------------- names


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def study_name(family: str, variant: str, problem: Problem, mode: str, ident: tuned.DeviceIdentity) -> str:
    """"deltalab/<family>/<variant>/<device-slug>/<dtype>/<BxTxHxKxV[/block]>/<mode>/triton-<version>"."""
    shape = f"{problem.B}x{problem.T}x{problem.H}x{problem.K}x{problem.V}"
    if problem.block_size != problem.K:
        shape += f"/{problem.block_size}"
    return "/".join(
        ["deltalab", family, variant, ident.slug, dtype_name(problem.dtype), shape, mode, f"triton-{ident.triton}"]
    )


def study_metadata(variant: Variant, problem: Problem, mode: str, ident: tuned.DeviceIdentity) -> dict:
    """What export needs to know about a study (stored as its user attr ``deltalab``)."""
    return {
        "schema": 1,
        "family": variant.family,
        "variant": variant.name,
        "mode": mode,
        "dtype": dtype_name(problem.dtype),
        "B": problem.B,
        "T": problem.T,
        "H": problem.H,
        "K": problem.K,
        "V": problem.V,
        "block_size": problem.block_size,
        "device_name": ident.name,
        "device_slug": ident.slug,
        "compute_capability": ident.compute_capability,
        "triton": ident.triton,
        "torch": torch.__version__,
        "default_config": dict(variant.default_config),
        "space_size": variant.space_size(),
    }


def numerics_problem(problem: Problem, max_T: int) -> Problem:
    """The problem numerics are checked on: same H, K, V, dtype, block size; at most 2 sequences of at
    most ``max_T`` tokens (T keeps its residue modulo 128, so tail handling is exercised the same way)."""
    T = problem.T if problem.T <= max_T else max_T + problem.T % 128
    B = min(problem.B, 2)
    return replace(problem, B=B, T=T, num_seqs=B, varlen=False)


# ---------------------------------------------------------------------------------------------- trials


WORKER = f"{socket.gethostname()}:{os.getpid()}"


def _params_of(trial: FrozenTrial) -> dict:
    if trial.state == TrialState.WAITING:
        return dict(trial.system_attrs.get("fixed_params", {}))
    return dict(trial.params)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(trial: FrozenTrial, stale_after_s: float, now: Optional[float] = None) -> bool:
    """A RUNNING trial whose worker is gone: a dead process on this host, or started longer ago than
    ``stale_after_s`` (workers on other hosts cannot be asked)."""
    if trial.state != TrialState.RUNNING:
        return False
    now = time.time() if now is None else now
    worker = trial.user_attrs.get("worker", "")
    host, _, pid = worker.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        return not _pid_alive(int(pid))
    started = trial.user_attrs.get("started")
    if started is None and trial.datetime_start is not None:
        started = trial.datetime_start.timestamp()
    return started is not None and now - float(started) > stale_after_s


def fail_stale_trials(study: optuna.Study, stale_after_s: float) -> int:
    """Close the RUNNING trials of dead workers as FAIL (their configs become free to run again)."""
    count = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if is_stale(trial, stale_after_s):
            try:
                study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
                count += 1
            except Exception:  # noqa: BLE001 -- another worker closed it first
                pass
    return count


def claimed_keys(study: optuna.Study, keys: list[str], stale_after_s: float) -> dict[str, FrozenTrial]:
    """Config key -> the lowest-numbered trial that owns it (queued, running on a live worker, or
    finished as ok/invalid)."""
    owners: dict[str, FrozenTrial] = {}
    for trial in study.get_trials(deepcopy=False):
        if trial.state == TrialState.FAIL or trial.user_attrs.get("status") == "duplicate":
            continue
        if trial.state == TrialState.RUNNING and is_stale(trial, stale_after_s):
            continue
        params = _params_of(trial)
        if set(params) != set(keys):
            continue
        key = config_key(params)
        if key not in owners or trial.number < owners[key].number:
            owners[key] = trial
    return owners


def earlier_owner(
    study: optuna.Study, number: int, key: str, keys: list[str], stale_after_s: float, wait_s: float = 30.0
) -> Optional[FrozenTrial]:
    """The trial numbered below ``number`` that already has config ``key`` (None if there is none).

    Earlier trials still being suggested (not all params set yet) are waited for, up to ``wait_s``:
    their config may be this one.
    """
    deadline = time.monotonic() + wait_s
    while True:
        undecided = False
        for trial in study.get_trials(deepcopy=False):
            if trial.number >= number or trial.state == TrialState.FAIL:
                continue
            if trial.state == TrialState.RUNNING and is_stale(trial, stale_after_s):
                continue
            params = _params_of(trial)
            if set(params) != set(keys):
                undecided = undecided or trial.state == TrialState.RUNNING
                continue
            if config_key(params) == key:
                return trial
        if not undecided or time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def _finish(study: optuna.Study, trial: optuna.Trial, attrs: dict, state: TrialState, value: Optional[float] = None) -> None:
    """Set ``attrs`` and close the trial; quietly skips a trial another worker closed as stale."""
    try:
        for name, val in attrs.items():
            trial.set_user_attr(name, val)
    except RuntimeError:
        return
    if state == TrialState.COMPLETE:
        study.tell(trial, value, skip_if_finished=True)
    else:
        study.tell(trial, state=state, skip_if_finished=True)


def _finite(x: float) -> Optional[float]:
    return float(x) if x is not None and math.isfinite(x) else None


# ---------------------------------------------------------------------------------------------- the study


class StudyRunner:
    """Runs one study (see the module docstring); ``run()`` returns a ``StudyOutcome``."""

    def __init__(
        self,
        variant: str,
        problem: Problem,
        *,
        storage,
        settings: Optional[TuneSettings] = None,
        family: str = "delta_rule",
        device: Optional[str] = None,
        timer: Optional[Timer] = None,
        checker: Optional[Callable[..., Any]] = None,
        precompiler: Optional[Precompiler] = None,
        on_event: Optional[Callable[[str, dict], None]] = None,
    ) -> None:
        self.settings = settings or TuneSettings()
        self.variant = registry.get(variant, family)
        self.family = family
        self.device = str(device or ("cuda" if problem.device == "cuda" else "cpu"))
        self.problem = replace(problem, device=torch.device(self.device).type)
        why = self.variant.unsupported_reason(self.problem)
        if why is not None:
            raise ValueError(f"variant: {variant!r} cannot run {self.problem.describe()}: {why}")
        no_backward = self.variant.backward_unsupported_reason(self.problem) if self.settings.mode != "fwd" else None
        if no_backward is not None:
            raise ValueError(f"mode: variant {variant!r} cannot run the backward here ({no_backward}); tune it with mode 'fwd'")
        self.space = SearchSpace(self.variant, self.problem, tuple(self.settings.keys))
        self.ident = tuned.device_identity(self.device)
        self.name = study_name(family, self.variant.name, self.problem, self.settings.mode, self.ident)
        if set(self.space.keys) != set(self.variant.space):
            self.name += "/keys-" + ",".join(self.space.keys)  # a restricted search is its own study
        if self.settings.tag:
            self.name += "/" + self.settings.tag
        self.strategy = choose(self.settings.sampler, self.space, self.settings.trials)
        self.timer = timer or HarnessTimer()
        self.checker = checker or harness_checker
        self._own_precompiler = precompiler is None
        self.precompiler = precompiler or Precompiler(self.device, jobs=max(1, self.settings.batch_size))
        self.on_event = on_event or (lambda kind, info: None)
        self.study = optuna.create_study(
            study_name=self.name,
            storage=storage,
            sampler=make_sampler(self.strategy, self.space, self.settings.seed),
            direction="minimize",
            load_if_exists=True,
        )
        if METADATA_KEY not in self.study.user_attrs:
            self.study.set_user_attr(METADATA_KEY, study_metadata(self.variant, self.problem, self.settings.mode, self.ident))
        self.ran_here = 0
        self._rng = random.Random(self.settings.seed)

    # ------------------------------------------------------------------ bookkeeping
    @property
    def budget(self) -> int:
        if self.strategy == "grid":
            return self.space.valid_size
        return min(self.settings.trials, self.space.valid_size)

    def evaluated_keys(self) -> set[str]:
        """Configs owned by a live or finished (non-duplicate) trial that passed the constraints --
        queued ones excluded (what the trial budget counts)."""
        owners = claimed_keys(self.study, self.space.keys, self.settings.stale_after_s)
        return {
            k for k, t in owners.items()
            if t.state != TrialState.WAITING and t.user_attrs.get("stage") != "constraint"
        }

    def _enqueue_unclaimed(self, configs: list[dict]) -> int:
        owners = claimed_keys(self.study, self.space.keys, self.settings.stale_after_s)
        count = 0
        for config in configs:
            if config_key(config) not in owners:
                self.study.enqueue_trial(config, user_attrs={"enqueued_by": WORKER})
                owners[config_key(config)] = None  # type: ignore[assignment]
                count += 1
        return count

    def warm_start(self) -> None:
        """Queue the default config and configs of earlier exports (grid: every valid point)."""
        if self.strategy == "grid":
            self._enqueue_unclaimed(list(self.space.valid_points or []))
            return
        configs = [self.space.default]
        if self.settings.warm_start:
            paths = list(self.settings.warm_start_paths)
            shipped = tuned.SHIPPED_DIR / f"{self.ident.slug}.json"
            if shipped.exists():
                paths.append(shipped)
            for entry in tuned.entries_for(self.problem, self.family, self.variant.name, paths=paths,
                                           grad=self.settings.mode != "fwd")[:8]:
                try:
                    config = self.space.complete(entry["config"])
                except (ValueError, TypeError):
                    continue
                if config not in configs:
                    configs.append(config)
        self._enqueue_unclaimed(configs)

    def _explore(self) -> bool:
        """Queue one config no trial has yet, at random: what a sampler that keeps proposing known
        configs (TPE converged on a small space) gets instead. False when there is none."""
        owners = claimed_keys(self.study, self.space.keys, self.settings.stale_after_s)
        valid = self.space.valid_points
        if valid is not None:
            free = [c for c in valid if config_key(c) not in owners]
            if not free:
                return False
            choice = free[self._rng.randrange(len(free))]
        else:
            params = self.space.params
            for _ in range(256):
                choice = {k: v[self._rng.randrange(len(v))] for k, v in params.items()}
                if config_key(choice) not in owners and self.space.reason(choice) is None:
                    break
            else:
                return False
        return self._enqueue_unclaimed([choice]) == 1

    def _done(self, unproductive: int) -> bool:
        if self.strategy == "grid":
            if self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                return False
            evaluated = self.evaluated_keys()
            missing = [c for c in self.space.valid_points or [] if config_key(c) not in evaluated]
            # points lost to interrupted workers go back into the queue
            return self._enqueue_unclaimed(missing) == 0
        if unproductive >= self.settings.max_unproductive:
            return True  # nothing new and valid could be found (the space is exhausted)
        return len(self.evaluated_keys()) >= self.budget

    # ------------------------------------------------------------------ one batch
    def _ask_batch(self) -> list[tuple[optuna.Trial, dict]]:
        n = self.settings.batch_size
        if self.strategy == "grid":
            n = min(n, max(1, len(self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))))
        else:
            n = min(n, max(1, self.budget - len(self.evaluated_keys())))
        batch = []
        for _ in range(n):
            trial = self.study.ask()
            config = self.space.suggest(trial)
            for name, value in (("worker", WORKER), ("device", self.device), ("started", time.time()),
                                ("config_key", config_key(config))):
                trial.set_user_attr(name, value)
            batch.append((trial, config))
        return batch

    def _event(self, kind: str, **info) -> None:
        self.on_event(kind, {"study": self.name, "variant": self.variant.name, "problem": self.problem, **info})

    def _invalid(self, trial, config, stage: str, reason: str, extra: Optional[dict] = None) -> None:
        _finish(self.study, trial, {"status": "invalid", "stage": stage, "reason": reason[:2000], **(extra or {})},
                TrialState.PRUNED)
        self._event("trial", status="invalid", config=config, stage=stage, reason=reason)

    def _evaluate(self, trial, config: dict) -> None:
        """Numerics, then timing, of one config that passed constraints and precompile."""
        s = self.settings
        self.ran_here += 1
        check = self.checker(
            self.variant.name,
            numerics_problem(self.problem, s.check_max_T),
            config,
            family=self.family,
            # forward and backward whatever is timed: the op runs the backward with the same config
            # (a miscompiled backward config must not win a forward-only study)
            backward=self.variant.backward_unsupported_reason(self.problem) is None,
            device=self.device,
        )
        errors = {k: (_finite(v) if _finite(v) is not None else "inf") for k, v in dict(getattr(check, "errors", {})).items()}
        if getattr(check, "skipped", False):
            return self._invalid(trial, config, "constraint", check.reason, {"errors": errors})
        if not check.passed:
            # a check that raised says so ("variant 'x' raised ..."); anything else is wrong numbers
            stage = classify(check.reason) if " raised " in check.reason else "numerics"
            self._invalid(trial, config, stage, check.reason, {"errors": errors})
            if stage == "device_fault":
                raise DeviceFault(f"config {config} broke the CUDA context: {check.reason}")
            return None
        try:
            samples = self.timer(
                self.variant.name, self.problem, config, s.mode, family=self.family, device=self.device,
                warmup_ms=s.warmup_ms, rep_ms=s.rep_ms,
            )
        except Exception as exc:  # noqa: BLE001 -- a config that cannot be timed is invalid
            text = exception_text(exc)
            stage = classify(text)
            self._invalid(trial, config, "device_fault" if stage == "device_fault" else "timing", text, {"errors": errors})
            if stage == "device_fault":
                raise DeviceFault(f"config {config} broke the CUDA context: {text}") from exc
            return None
        samples = [float(x) for x in samples]
        if not samples or not all(math.isfinite(x) and x > 0 for x in samples):
            return self._invalid(trial, config, "timing", f"no valid timing samples: {samples[:5]}", {"errors": errors})
        median = statistics.median(samples)
        mean = statistics.fmean(samples)
        std = statistics.stdev(samples) if len(samples) > 1 else 0.0
        attrs = {
            "status": "ok",
            "stage": "",
            "reason": "",
            "errors": errors,
            "median_ms": median,
            "mean_ms": mean,
            "std_ms": std,
            "min_ms": min(samples),
            "cv": std / mean if mean else None,
            "n_samples": len(samples),
            "samples_ms": samples[:MAX_SAMPLES_KEPT],
        }
        _finish(self.study, trial, attrs, TrialState.COMPLETE, median)
        self._event("trial", status="ok", config=config, value=median)
        return None

    def _run_batch(self, batch: list[tuple[optuna.Trial, dict]]) -> int:
        """Dedupe, constraints, precompile, evaluate; returns how many configs got past the constraints."""
        todo = []
        for trial, config in batch:
            owner = earlier_owner(self.study, trial.number, config_key(config), self.space.keys, self.settings.stale_after_s)
            if owner is not None:
                _finish(self.study, trial, {"status": "duplicate", "duplicate_of": owner.number}, TrialState.FAIL)
                self._event("trial", status="duplicate", config=config, duplicate_of=owner.number)
                if self.strategy != "grid" and len(self.evaluated_keys()) < self.budget:
                    self._explore()
                continue
            reason = self.space.reason(config)
            if reason is not None:
                self._invalid(trial, config, "constraint", reason)
                continue
            todo.append((trial, config))
        if todo:
            verdicts = self.precompiler.warm(self.family, self.variant.name, self.problem, [c for _, c in todo], self.settings.mode)
            for trial, config in todo:
                verdict = verdicts.get(config_key(config))
                if verdict is not None:
                    self._invalid(trial, config, verdict[0], verdict[1])
                else:
                    self._evaluate(trial, config)
        return len(todo)

    # ------------------------------------------------------------------ the whole study
    def run(self) -> StudyOutcome:
        try:
            return self._run()
        finally:
            if self._own_precompiler:
                self.precompiler.close()

    def _run(self) -> StudyOutcome:
        fail_stale_trials(self.study, self.settings.stale_after_s)
        self.warm_start()
        self._event("start", budget=self.budget, strategy=self.strategy, done=len(self.evaluated_keys()),
                    note=self.precompiler.note)
        unproductive = 0  # consecutive batches of only duplicates and constraint rejections
        while not self._done(unproductive):
            batch = self._ask_batch()
            try:
                productive = self._run_batch(batch)
            except BaseException:
                # interrupted (Ctrl-C, a device fault, a crash): close what this batch left open, so
                # the configs are free for the next run; finished trials are already stored
                for trial, _ in batch:
                    try:
                        _finish(self.study, trial, {"status": "interrupted"}, TrialState.FAIL)
                    except Exception:  # noqa: BLE001 -- storage gone too: nothing more to save
                        pass
                raise
            unproductive = unproductive + 1 if productive == 0 else 0
            if unproductive >= 3 and self.strategy != "grid" and len(self.evaluated_keys()) < self.budget:
                self._explore()  # the sampler keeps missing: give it a random valid config
            self._event("progress", done=len(self.evaluated_keys()), budget=self.budget)
        selection = self.select() if self.settings.select else None
        return self.outcome(selection)

    def _wait_for_others(self) -> None:
        deadline = time.monotonic() + self.settings.wait_for_others_s
        while time.monotonic() < deadline:
            running = [
                t for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if not is_stale(t, self.settings.stale_after_s)
            ]
            if not running:
                return
            self._event("waiting", running=len(running))
            time.sleep(0.5)

    def ok_trials(self) -> list[FrozenTrial]:
        """COMPLETE trials that passed numerics, fastest first (ties: config key)."""
        trials = [
            t for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get("status") == "ok"
        ]
        return sorted(trials, key=lambda t: (t.value, config_key(t.params)))

    def select(self) -> Optional[Selection]:
        """Re-time the best ``top_k`` configs and the default interleaved; store and return the choice."""
        s = self.settings
        self._wait_for_others()
        ranked = self.ok_trials()
        if not ranked:
            return None
        candidates: list[dict] = []
        for trial in ranked:
            if len(candidates) == s.top_k:
                break
            if dict(trial.params) not in candidates:
                candidates.append(dict(trial.params))
        default = self.space.default
        default_key = config_key(default)
        if default not in candidates and any(config_key(t.params) == default_key for t in ranked):
            candidates.append(default)
        self._event("select", candidates=len(candidates), rounds=s.rounds)

        def measure(config: dict) -> float:
            samples = self.timer(
                self.variant.name, self.problem, config, s.mode, family=self.family, device=self.device,
                warmup_ms=s.round_warmup_ms, rep_ms=s.round_rep_ms,
            )
            return statistics.median(samples)

        rounds = interleaved_rounds(candidates, measure, s.rounds)
        selection = select_winner(
            rounds,
            {config_key(c): c for c in candidates},
            default_key if default in candidates else None,
            min_gain=s.min_gain,
        )
        self.study.set_user_attr(
            SELECTION_KEY,
            {**selection.to_dict(), "worker": WORKER, "device": self.device, "time": time.time()},
        )
        if hasattr(self.timer, "clear"):
            self.timer.clear()
        self._event("selected", config=selection.winner, value=selection.median_ms, speedup=selection.speedup)
        return selection

    def outcome(self, selection: Optional[Selection] = None) -> StudyOutcome:
        trials = self.study.get_trials(deepcopy=False)
        counts = {"ok": 0, "invalid": 0, "duplicate": 0}
        stages: dict[str, int] = {}
        for t in trials:
            status = t.user_attrs.get("status")
            if status in counts:
                counts[status] += 1
            if status == "invalid":
                stage = t.user_attrs.get("stage", "error")
                stages[stage] = stages.get(stage, 0) + 1
        ranked = self.ok_trials()
        default_key = config_key(self.space.default)
        default_ms = next((t.value for t in ranked if config_key(t.params) == default_key), None)
        return StudyOutcome(
            study_name=self.name,
            variant=self.variant.name,
            family=self.family,
            problem=self.problem,
            mode=self.settings.mode,
            strategy=self.strategy,
            counts=counts,
            ran_here=self.ran_here,
            best_config=dict(ranked[0].params) if ranked else None,
            best_ms=ranked[0].value if ranked else None,
            default_ms=default_ms,
            selection=selection,
            invalid_stages=stages,
        )


def tune_problem(variant: str, problem: Problem, *, storage, **kwargs) -> StudyOutcome:
    """Run (or join, or resume) the study of ``variant`` on ``problem``; see ``StudyRunner``."""
    return StudyRunner(variant, problem, storage=storage, **kwargs).run()
