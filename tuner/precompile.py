"""Compile the next batch of candidate configs in parallel, ahead of timing.

Triton compiles a kernel on its first call and caches the binary on disk (``~/.triton/cache`` or
``TRITON_CACHE_DIR``), keyed by source, constants and launch settings. A pool of worker *processes*
(spawned, one CUDA context each, on the tuning device) runs every candidate once on a tiny input of the
same head dims, dtype and divisibility (``warm_problem``) -- forward, and backward when the study times
it -- so that when the tuning process reaches the config, its kernels load from the cache instead of
compiling while the GPU idles. Processes rather than threads: compilation holds the GIL for long
stretches, and a config that crashes (segfault, illegal address) takes down only its worker, so it is
recorded as invalid without poisoning the tuning process's CUDA context.

The study alternates the two phases -- compile a batch in parallel, then check and time its configs
one by one -- rather than overlapping them, so that compilation never competes with a timing for the
host's CPUs (kernel launch overhead is part of what is timed).

Under Triton's CPU interpreter (no GPU) nothing is compiled, so this is a no-op there (``enabled`` is
False and ``note`` says so).
"""

from __future__ import annotations

import concurrent.futures as futures
import multiprocessing
import os
from dataclasses import replace
from typing import Optional

from deltalab.variants.registry import Problem

from .failures import classify, exception_text
from .space import config_key

WARM_TOKENS = 256


def warm_problem(problem: Problem) -> Problem:
    """A one-sequence problem with the same H, K, V, dtype and block size, and T congruent to the
    original modulo 128 (so integer arguments keep their divisibility specialisations)."""
    T = problem.T if problem.T <= WARM_TOKENS + 128 else WARM_TOKENS + problem.T % 128
    return replace(problem, B=1, T=T, num_seqs=1, varlen=False)


_FAULTED = False  # set in a worker process whose CUDA context a config broke


def _warm_one(family: str, variant: str, problem: Problem, config: dict, mode: str, device: str) -> Optional[tuple[str, str]]:
    """Run ``variant`` once on ``warm_problem(problem)`` in this (worker) process; None when it ran,
    else (stage, reason). A worker whose CUDA context an earlier config broke exits instead, so the
    pool restarts and the config is retried in a healthy process."""
    global _FAULTED
    import torch

    from deltalab.harness.timing import make_runner

    if _FAULTED:
        os._exit(3)
    on_cuda = torch.device(device).type == "cuda"
    try:
        if on_cuda:
            torch.cuda.set_device(torch.device(device).index or 0)  # plain "cuda" = device 0
        runner = make_runner(variant, warm_problem(problem), config, mode, family=family, device=device)
        runner()
        if on_cuda:
            torch.cuda.synchronize()
        return None
    except Exception as exc:  # noqa: BLE001 -- every failure is a verdict on the config
        text = exception_text(exc)
        stage = classify(text)
        _FAULTED = stage == "device_fault"
        return stage, "precompile: " + text


class Precompiler:
    """A pool of ``jobs`` spawned processes compiling configs for ``device`` (CUDA only)."""

    def __init__(self, device: str, jobs: Optional[int] = None) -> None:
        self.device = str(device)
        self.enabled = self.device.startswith("cuda") and os.environ.get("TRITON_INTERPRET") != "1"
        self.jobs = max(1, jobs if jobs is not None else min(8, os.cpu_count() or 1))
        self.note = (
            f"precompiling candidates in {self.jobs} processes"
            if self.enabled
            else "CPU / Triton interpreter: nothing to compile ahead, precompile skipped"
        )
        self._pool: Optional[futures.ProcessPoolExecutor] = None

    def _new_pool(self, workers: int) -> futures.ProcessPoolExecutor:
        return futures.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))

    def warm(self, family: str, variant: str, problem: Problem, configs: list[dict], mode: str) -> dict[str, Optional[tuple[str, str]]]:
        """Compile ``configs`` in parallel; config key -> None (ready) or (stage, reason) (invalid)."""
        results: dict[str, Optional[tuple[str, str]]] = {config_key(c): None for c in configs}
        if not self.enabled or not configs:
            return results
        if self._pool is None:
            self._pool = self._new_pool(self.jobs)
        pending = {
            self._pool.submit(_warm_one, family, variant, problem, config, mode, self.device): config for config in configs
        }
        crashed = []
        for future, config in pending.items():
            try:
                results[config_key(config)] = future.result()
            except futures.process.BrokenProcessPool:
                crashed.append(config)
        if crashed:
            # a worker died: the pool is gone, and which config killed it is unknown -- retry each
            # alone; the ones that kill their worker again are invalid
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
            for config in crashed:
                solo = self._new_pool(1)
                try:
                    results[config_key(config)] = solo.submit(
                        _warm_one, family, variant, problem, config, mode, self.device
                    ).result()
                except futures.process.BrokenProcessPool:
                    results[config_key(config)] = ("crash", "precompile: the compile worker process died running it")
                finally:
                    solo.shutdown(wait=False, cancel_futures=True)
        return results

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "Precompiler":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
