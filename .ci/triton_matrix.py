"""The Triton releases the project supports beside the one CI's main suite runs on (the pin in pyproject.toml).

    python .ci/triton_matrix.py install 3.9.0               the folder that holds triton 3.9.0 (installed once,
                                                            then cached); put it first on PYTHONPATH
    python .ci/triton_matrix.py interpreter 3.9.0 [ARGS]    the interpreter tests of every Triton variant on it
    python .ci/triton_matrix.py compile [--versions V,...]  every kernel of the chunk plans compiled for sm_90 at
                                                            K = 64, 128, 256 on each release: a table of registers
                                                            and spills; exits 1 on a compile failure, or on a
                                                            spill where the pinned release has none that
                                                            KNOWN_SPILLS (and the README) does not name

Each release is installed with pip into a folder of its own under $DELTALAB_TRITON_CACHE (default
~/.cache/deltalab/triton/<version>), so the wheels (200-300 MB each) download once per machine and every CI
step after the first reuses them. The pinned release is the one installed in the interpreter running this.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
from pathlib import Path

VERSIONS = ("3.6.0", "3.7.1", "3.8.0", "3.9.0")
NEWEST = VERSIONS[-1]
# (release, shape label, config label, kernel): spill bytes where the pinned release spills none -- each is named
# in the README's "Triton versions" section
KNOWN_SPILLS = {
    ("3.9.0", "K256", "default", "state_bwd"): 24,
    ("3.9.0", "K256", "tma", "state_bwd"): 24,
}
# the chunk plans compiled: the paper's shapes at H * D = 2048 where one sequence fills the GPU's width, and at
# K = 256 the batch where output="auto" takes the separate output kernel
SHAPES = {
    "K64": ["--K", "64", "--V", "64", "--H", "32", "--B", "1", "--T", "16384"],
    "K128": ["--K", "128", "--V", "128", "--H", "16", "--B", "1", "--T", "16384"],
    "K256": ["--K", "256", "--V", "256", "--H", "8", "--B", "4", "--T", "4096"],
}
# the plan as launched outside a CUDA graph, and with every tensor-descriptor variant (the Gluon inverse's keys
# and the Triton scans' tiles through TMA)
CONFIGS = {"default": "{}", "tma": '{"tma": "on"}'}
ROOT = Path(__file__).resolve().parent.parent


def cache_dir(version: str) -> Path:
    base = Path(os.environ.get("DELTALAB_TRITON_CACHE", Path.home() / ".cache" / "deltalab" / "triton"))
    return base / version


def pinned_version() -> str:
    import triton

    return triton.__version__


def install(version: str) -> Path | None:
    """The folder holding triton ``version`` (None: the pinned one, already importable)."""
    if version == pinned_version():
        return None
    target = cache_dir(version)
    marker = target / ".installed"
    if not marker.exists():
        print(f"triton_matrix: installing triton=={version} into {target}", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                        "--no-compile", "--upgrade", "--target", str(target), f"triton=={version}"], check=True)
        marker.touch()
    return target


def environment(version: str) -> dict:
    env = dict(os.environ)
    target = install(version)
    if target is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(target)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def interpreter(version: str, args: list[str]) -> int:
    """pytest on the Triton variants' interpreter tests under triton ``version`` (the sm_90 compile tests excluded:
    `compile` runs those on every release)."""
    env = dict(environment(version), TRITON_INTERPRET="1")
    command = [sys.executable, "-m", "pytest", "tests/test_recurrent.py", "tests/test_chunk.py",
               "tests/test_block_diag.py", "tests/test_op.py", "-q", "-p", "no:cacheprovider",
               "-k", "not sm90 and not register_caps", *args]
    check = subprocess.run([sys.executable, "-c", "import triton; print(triton.__version__)"], env=env,
                           capture_output=True, text=True, check=True)
    print(f"triton_matrix: interpreter tests on triton {check.stdout.strip()}", flush=True)
    return subprocess.run(command, env=env, cwd=ROOT).returncode


def compile_one(version: str, shape: str, config: str) -> tuple[str, str, str, dict | str]:
    """chunk_aot's report for one (release, shape, config), or the error's last lines."""
    env = environment(version)
    env.pop("TRITON_INTERPRET", None)
    env["DELTALAB_FAST_PATHS"] = "strict"
    result = subprocess.run([sys.executable, "-m", "deltalab.variants.chunk_aot", *SHAPES[shape], "--config",
                             CONFIGS[config]], env=env, cwd=ROOT, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode or not lines:
        tail = [line for line in result.stderr.splitlines() if line.strip() and "leak" not in line]
        return version, shape, config, "\n".join(tail[-6:]) or f"exit code {result.returncode}"
    return version, shape, config, json.loads(lines[-1])


def compile_matrix(versions: list[str]) -> int:
    from rich.console import Console
    from rich.table import Table

    for version in versions:  # one at a time: pip's downloads would race
        install(version)
    jobs = [(v, s, c) for v in versions for s in SHAPES for c in CONFIGS]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:  # (CI has two cores)
        results = {(v, s, c): report for v, s, c, report in pool.map(lambda job: compile_one(*job), jobs)}
    pinned = pinned_version()
    failures, new_spills = [], []
    table = Table(title="chunk kernels compiled for sm_90: registers / spill bytes", show_lines=False)
    for column in ("K", "config", "kernel", *versions):
        table.add_column(column, justify="right" if column in versions else "left")
    for shape in SHAPES:
        for config in CONFIGS:
            reports = {v: results[(v, shape, config)] for v in versions}
            for version, report in reports.items():
                if isinstance(report, str):
                    failures.append(f"triton {version} {shape} {config}: {report}")
            kernels = sorted({k for r in reports.values() if isinstance(r, dict) for k in r})
            for kernel in kernels:
                cells = []
                base = reports.get(pinned)
                base_spill = base[kernel]["spill_bytes"] if isinstance(base, dict) and kernel in base else 0
                for version, report in reports.items():
                    if not isinstance(report, dict):
                        cells.append("[red]failed[/red]")
                        continue
                    if kernel not in report:
                        cells.append("-")
                        continue
                    usage = report[kernel]
                    spill = usage["spill_bytes"]
                    cell = f"{usage['registers']} / {spill}"
                    if spill > base_spill:
                        known = KNOWN_SPILLS.get((version, shape, config, kernel))
                        if known != spill:
                            new_spills.append(f"triton {version} {shape} {config} {kernel}: {spill} spill bytes "
                                              f"(triton {pinned}: {base_spill})")
                            cell = f"[red]{cell}[/red]"
                        else:
                            cell = f"[yellow]{cell}[/yellow]"
                    cells.append(cell)
                table.add_row(shape, config, kernel, *cells)
    Console(width=120).print(table)
    for line in failures + new_spills:
        print(f"triton_matrix: {line}", file=sys.stderr)
    if failures or new_spills:
        return 1
    print(f"triton_matrix: every kernel compiled on triton {', '.join(versions)}; spills beyond triton {pinned}'s: "
          f"{len(KNOWN_SPILLS)} known (the README names them)")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install").add_argument("version", choices=VERSIONS)
    run = sub.add_parser("interpreter")
    run.add_argument("version", choices=VERSIONS)
    sub.add_parser("compile").add_argument("--versions", default=",".join(VERSIONS))
    args, rest = parser.parse_known_args(argv)
    if args.command == "install":
        print(install(args.version) or "")
        return 0
    if args.command == "interpreter":
        return interpreter(args.version, rest)
    versions = args.versions.split(",")
    unknown = sorted(set(versions) - set(VERSIONS))
    if unknown:
        parser.error(f"--versions: unknown {', '.join(unknown)} (supported: {', '.join(VERSIONS)})")
    return compile_matrix(versions)


if __name__ == "__main__":
    sys.exit(main())
