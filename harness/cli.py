"""The ``deltalab`` command line (typer + rich). Each command's work lives in its own module; the
commands here only parse options and print.

Without a CUDA GPU the Triton variants run under Triton's CPU interpreter: ``main`` sets
TRITON_INTERPRET=1 before any kernel module is imported, and commands say so.
"""

from __future__ import annotations

import os

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="deltalab: delta-rule kernels -- variants, numerics checks, timing sweeps, tuning, reports.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()


@app.callback()
def _root() -> None:
    """deltalab: delta-rule kernels -- variants, numerics checks, timing sweeps, tuning, reports."""


def use_interpreter_without_gpu() -> bool:
    """Run Triton kernels under the interpreter when there is no CUDA device; True if it does."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    return os.environ.get("TRITON_INTERPRET") == "1"


@app.command("variants")
def variants_command(family: str = typer.Option("delta_rule", help="delta_rule or block_diag")) -> None:
    """List the registered variants, what they support and their tunable space."""
    from deltalab.variants import registry

    table = Table(title=f"registered {family} variants")
    for col in ("name", "devices", "dtypes", "head dims", "varlen", "backward", "space (size)", "description"):
        table.add_column(col)
    for v in registry.variants(family):
        dtypes = ", ".join(str(d).replace("torch.", "") for d in v.dtypes)
        space = ", ".join(f"{k}" for k in v.space) or "-"
        table.add_row(
            v.name,
            ", ".join(v.devices),
            dtypes,
            f"{v.min_head_dim}-{v.max_head_dim}",
            "yes" if v.varlen else "no",
            "yes" if v.supports_backward else "no",
            f"{space} ({v.space_size()})",
            v.description,
        )
    console.print(table)


@app.command("regress")
def regress_command(
    baseline: str | None = typer.Option(None, "--baseline", help="Baseline JSON to re-measure and compare against."),
    write_baseline: str | None = typer.Option(
        None, "--write-baseline", help="Measure the cases on this GPU and write them as a baseline JSON "
        "(the baseline's cases with --baseline, else the default set below)."
    ),
    min_effect: float = typer.Option(0.05, help="Smallest slowdown/speed-up that counts (0.05 = 5 %)."),
    max_cv: float = typer.Option(0.10, help="Cases whose robust CV exceeds this (either side) are 'noisy', not failed."),
    confidence: float = typer.Option(0.95, help="Confidence of the bootstrap interval of the time ratio."),
    resamples: int = typer.Option(2000, help="Bootstrap resamples."),
    rounds: int | None = typer.Option(None, help="Interleaved measuring rounds (default: the baseline's, else 5)."),
    warmup_ms: float | None = typer.Option(None, help="Warm-up per case and round (default: the baseline's, else 25)."),
    rep_ms: float | None = typer.Option(None, help="Timed ms per case and round (default: the baseline's, else 100)."),
    seed: int = typer.Option(0, help="Seed of the bootstrap and of the round order."),
    allow_mismatch: bool = typer.Option(False, help="Compare even across GPU models / Triton versions."),
    json_out: str | None = typer.Option(None, "--json", help="Write the full result (rows with samples) as JSON."),
    junit: str | None = typer.Option(None, "--junit", help="Write JUnit XML (regressions fail, noisy skipped)."),
    markdown: str | None = typer.Option(None, "--markdown", help="Append a Markdown summary (e.g. $GITHUB_STEP_SUMMARY)."),
    out: str | None = typer.Option(None, "--out", help="Also write a sweep-style results folder for `deltalab report`."),
    variants: str = typer.Option("chunk,recurrent", help="Default case set: variants (unregistered ones skipped)."),
    modes: str = typer.Option("fwd,fwd+bwd", help="Default case set: modes."),
    head_dims: str = typer.Option("64,128,256", "--D", help="Default case set: head dims (K = V = D)."),
    seq_len: int = typer.Option(4096, "--T", help="Default case set: sequence length."),
    tokens: int = typer.Option(16384, help="Default case set: B * T."),
    hidden: int = typer.Option(2048, "--hd", help="Default case set: H * D."),
    dtype: str = typer.Option("bfloat16", help="Default case set: dtype."),
    family: str = typer.Option("delta_rule", help="Default case set: family."),
    replay: str | None = typer.Option(
        None, "--replay", hidden=True, envvar="DELTALAB_REGRESS_REPLAY",
        help="Testing hook: replay recorded samples from a baseline-format file instead of timing.",
    ),
) -> None:
    """Performance-regression check: re-measure a baseline's cases on this GPU, judge each by a bootstrap
    interval of the median-time ratio. Exit 0 ok, 1 regression or failed case, 2 refused (other GPU/Triton,
    bad baseline, no GPU)."""
    from pathlib import Path

    from deltalab.harness import regress

    settings = regress.Settings(min_effect=min_effect, max_cv=max_cv, confidence=confidence, resamples=resamples, seed=seed)
    explicit = []  # measuring settings given here; the others follow the baseline's
    for name, value in (("rounds", rounds), ("warmup_ms", warmup_ms), ("rep_ms", rep_ms)):
        if value is not None:
            setattr(settings, name, value)
            explicit.append(name)

    def split(text: str) -> list[str]:
        return [part.strip() for part in text.split(",") if part.strip()]

    try:
        case_options = dict(
            variants=split(variants), modes=split(modes), head_dims=[int(d) for d in split(head_dims)],
            seq_len=seq_len, tokens=tokens, hidden=hidden, dtype=dtype, family=family,
        )
    except ValueError:
        console.print(f"[red]--D: expected comma-separated integers, got {head_dims!r}[/]")
        raise typer.Exit(2)
    code = regress.run_cli(
        console,
        baseline_path=Path(baseline) if baseline else None,
        write_baseline_path=Path(write_baseline) if write_baseline else None,
        settings=settings,
        explicit=explicit,
        allow_mismatch=allow_mismatch,
        json_path=Path(json_out) if json_out else None,
        junit_path=Path(junit) if junit else None,
        markdown_path=Path(markdown) if markdown else None,
        out_dir=Path(out) if out else None,
        case_options=case_options,
        replay_path=Path(replay) if replay else None,
    )
    raise typer.Exit(code)


def _split_csv(text: str | None) -> list[str]:
    """"a, b,c" -> ["a", "b", "c"]; None or "" -> []."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _widen_console_for_logs(width: int = 180) -> None:
    """Wide tables stay readable in CI logs and pipes: rich uses 80 columns when stdout is not a
    terminal (and COLUMNS is unset)."""
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = max(console.width, width)


@app.command("check")
def check_command(
    variant: str | None = typer.Option(
        None, "--variant", help="Comma-separated variant names (default: every registered variant but the reference)."
    ),
    dtype: str | None = typer.Option(
        None, "--dtype", help="Comma-separated dtypes (default: bf16,fp16,fp32 on a GPU; fp32,fp16 on CPU)."
    ),
    family: str = typer.Option("all", help="delta_rule, block_diag or all."),
    quick: bool = typer.Option(False, "--quick", help="The reduced shape set."),
    backward: bool = typer.Option(True, "--backward/--no-backward", help="Also check every gradient."),
    seed: int = typer.Option(0, help="Seed of the random inputs."),
    json_out: str | None = typer.Option(None, "--json", help="Also write every result as a JSON list of rows."),
) -> None:
    """Numerics gate: every variant against the float64 reference on fresh random inputs (outputs
    poisoned with NaN), o, final state and every gradient. Exit 1 on any failure; variants that do not
    support a shape/dtype/device are listed as skipped."""
    import json
    from dataclasses import replace

    import torch
    from rich.progress import Progress

    from deltalab.harness import numerics
    from deltalab.harness.sweep import parse_dtype
    from deltalab.variants import registry

    interpreting = use_interpreter_without_gpu()
    _widen_console_for_logs()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if family != "all" and family not in registry.FAMILIES:
        console.print(f"[red]--family: expected delta_rule, block_diag or all, got {family!r}[/]")
        raise typer.Exit(2)
    families = list(registry.FAMILIES) if family == "all" else [family]
    try:
        dtypes = [parse_dtype(d) for d in _split_csv(dtype)] or numerics.check_dtypes(device)
    except ValueError as exc:
        console.print(f"[red]--dtype: {exc}[/]")
        raise typer.Exit(2)
    names = _split_csv(variant)
    unknown = [n for n in names if not any(n in registry.names(f) for f in families)]
    if unknown:
        known = ", ".join(sorted({n for f in families for n in registry.names(f)}))
        console.print(f"[red]--variant: unknown {', '.join(unknown)} (registered: {known})[/]")
        raise typer.Exit(2)

    plan = []
    for fam in families:
        chosen = [n for n in names if n in registry.names(fam)] if names else numerics.check_variants(fam)
        for problem in numerics.check_problems(fam, device, quick):
            for dt in dtypes:
                plan.extend((fam, name, replace(problem, dtype=dt)) for name in chosen)
    if device == "cpu":
        console.print(
            "[yellow]No CUDA GPU: checking on CPU"
            + (" (Triton kernels under the interpreter, TRITON_INTERPRET=1)" if interpreting else "")
            + " with small shapes; bf16 is checked on a GPU.[/]"
        )
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("checking", total=len(plan))

        def advance(result: numerics.CheckResult) -> None:
            progress.update(task, advance=1, description=f"{result.variant} {result.problem.describe()}")

        results = numerics.run_checks(plan, backward=backward, seed=seed, on_result=advance)
    console.print(numerics.check_table(results))
    counts = {s: sum(r.status == s for r in results) for s in ("passed", "failed", "skipped")}
    console.print(
        f"[green]{counts['passed']} passed[/], [red]{counts['failed']} failed[/], "
        f"[yellow]{counts['skipped']} skipped[/] (tolerances: deltalab.harness.numerics.TOLERANCES)"
    )
    if json_out:
        with open(json_out, "w") as f:
            json.dump([r.to_row() for r in results], f, indent=1)
    if counts["failed"]:
        raise typer.Exit(1)


@app.command("sweep")
def sweep_command(
    variants: str | None = typer.Option(
        None, help="Comma-separated variants (default: every registered Triton variant; plus torch_chunk on CPU)."
    ),
    peers: bool = typer.Option(True, "--peers/--no-peers", help="Also time the installed peers (fla chunk/recurrent, SDPA)."),
    modes: str | None = typer.Option(None, help="Comma-separated modes: fwd, bwd, fwd+bwd (default: fwd,fwd+bwd; CPU: fwd)."),
    dtypes: str | None = typer.Option(None, help="Comma-separated dtypes (default: bf16; CPU: fp32)."),
    seq_lens: str | None = typer.Option(None, "--T", help="Sequence lengths, e.g. 512,1K,4K (default: 512..16K, plus 64K at D=128; CPU: 16,32,64)."),
    head_dims: str | None = typer.Option(None, "--D", help="Head dims K = V (default: 64,128,256; CPU: 16,32)."),
    tokens: int | None = typer.Option(None, "--tokens", help="B * T (default 16384; CPU 64)."),
    hd: int | None = typer.Option(None, "--hd", help="H * D, H at least 1 (default 2048; CPU 16)."),
    family: str = typer.Option("delta_rule", help="delta_rule or block_diag."),
    block_size: int | None = typer.Option(None, "--block-size", help="Key block of the block_diag family (default: K)."),
    value_dim: int | None = typer.Option(None, "--V", help="Fix the value head dim V (default: V = K = D)."),
    heads: int | None = typer.Option(None, "--H", help="Fix the number of heads H (default: H = hd // D)."),
    out: str | None = typer.Option(None, "--out", help="Output folder (default: out/sweep-<date>)."),
    baseline: str | None = typer.Option(None, help="Variant the summary's speed-ups are against (default: recurrent, else the first)."),
    warmup_ms: float | None = typer.Option(None, help="Warm-up per item, ms (default 25; CPU 0)."),
    rep_ms: float | None = typer.Option(None, help="Timed ms per item (default 100; CPU 0: just --min-reps calls)."),
    min_reps: int | None = typer.Option(None, help="Fewest timed calls per item (default 5; CPU 2)."),
    quick: bool = typer.Option(False, "--quick", help="A reduced grid."),
    cuda_graph: str = typer.Option(
        "off", "--cuda-graph", help="Time CUDA-graph replays (no host launch overhead): off, on, or auto (calls under 0.05 ms)."
    ),
    flush_l2: bool = typer.Option(True, "--flush-l2/--no-flush-l2", help="Flush L2 before every timed call."),
    roofline: bool = typer.Option(True, "--roofline/--no-roofline", help="Measure the ceilings for floor figures."),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 when any item failed."),
    config: str | None = typer.Option(
        None, "--config", help='A JSON config for the listed variants of ours, e.g. \'{"output": "separate"}\' (default: the op\'s choice).'
    ),
) -> None:
    """Throughput sweep over sequence lengths, head dims, modes and dtypes; writes results.csv/json,
    environment.json and ceilings.json, and prints speed-ups against a baseline. Without a GPU it runs
    a tiny grid under Triton's interpreter (times then say nothing about GPU speed)."""
    import torch

    from deltalab.harness import peers as peer_mod
    from deltalab.harness import sweep
    from deltalab.variants import registry

    interpreting = use_interpreter_without_gpu()
    _widen_console_for_logs()
    on_gpu = torch.cuda.is_available()
    device = "cuda" if on_gpu else "cpu"
    if family not in registry.FAMILIES:
        console.print(f"[red]--family: expected one of {', '.join(registry.FAMILIES)}, got {family!r}[/]")
        raise typer.Exit(2)
    if cuda_graph not in ("off", "on", "auto"):
        console.print(f"[red]--cuda-graph: expected off, on or auto, got {cuda_graph!r}[/]")
        raise typer.Exit(2)
    try:
        mode_list = _split_csv(modes) or (["fwd", "fwd+bwd"] if on_gpu else ["fwd"])
        dtype_list = [sweep.parse_dtype(d) for d in _split_csv(dtypes)] or [torch.bfloat16 if on_gpu else torch.float32]
        lens = [sweep.parse_size(t) for t in _split_csv(seq_lens)]
        dims = [sweep.parse_size(d) for d in _split_csv(head_dims)]
        custom = bool(lens or dims or tokens or hd or block_size or value_dim or heads)
        if quick and not custom:
            shapes = sweep.quick_grid(on_gpu)
        elif on_gpu and not custom:
            shapes = sweep.paper_grid()
        else:
            shapes = sweep.grid(
                lens or (sweep.PAPER_SEQ_LENS if on_gpu else sweep.CPU_SEQ_LENS),
                dims or (sweep.PAPER_HEAD_DIMS if on_gpu else sweep.CPU_HEAD_DIMS),
                tokens=tokens or (sweep.PAPER_TOKENS if on_gpu else sweep.CPU_TOKENS),
                hd=hd or (sweep.PAPER_HD if on_gpu else sweep.CPU_HD),
                block_size=block_size,
                value_dim=value_dim,
                heads=heads,
            )
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2)
    names = _split_csv(variants) or sweep.default_variants(family, device)
    unknown = [n for n in names if n not in registry.names(family) and not peer_mod.is_peer(n)]
    if unknown:
        console.print(f"[red]--variants: unknown {', '.join(unknown)} (registered: {', '.join(registry.names(family))})[/]")
        raise typer.Exit(2)
    peer_names = [p for p in peer_mod.available() if p not in names] if peers and family == "delta_rule" else []
    configs = {}
    if config:
        import json

        try:
            parsed = json.loads(config)
            if not isinstance(parsed, dict):
                raise ValueError(f"expected a JSON object, got {config!r}")
            for name in names:
                if not peer_mod.is_peer(name):
                    registry.get(name, family).check_config(parsed)  # unknown keys or values, named
                    configs[name] = parsed
        except ValueError as exc:
            console.print(f"[red]--config: {exc}[/]")
            raise typer.Exit(2)
    if not on_gpu:
        console.print(
            "[bold yellow]No CUDA GPU: sweeping a tiny CPU grid"
            + (" with the Triton variants under Triton's interpreter (TRITON_INTERPRET=1)" if interpreting else "")
            + ". These times measure the CPU/interpreter, not kernel performance.[/]"
        )
    console.print(
        f"{len(shapes)} shapes x {len(dtype_list)} dtypes x {len(names) + len(peer_names)} variants/peers "
        f"({', '.join(names + peer_names)}) x modes {', '.join(mode_list)}"
    )
    result = sweep.run_sweep(
        out,
        shapes=shapes,
        variants=names,
        modes=mode_list,
        dtypes=dtype_list,
        family=family,
        peers=peer_names,
        configs=configs,
        warmup_ms=warmup_ms if warmup_ms is not None else (25.0 if on_gpu else 0.0),
        rep_ms=rep_ms if rep_ms is not None else (100.0 if on_gpu else 0.0),
        min_reps=min_reps or (5 if on_gpu else 2),
        cuda_graph={"off": False, "on": True, "auto": "auto"}[cuda_graph],
        flush_l2=flush_l2,
        measure_roofline=roofline,
        console=console,
    )
    frame = result.frame
    if baseline is None:
        baseline = "recurrent" if "recurrent" in names else (names[0] if names else None)
    console.print(sweep.summary_table(frame, baseline))
    bad = sweep.status_table(frame)
    if bad is not None:
        console.print(bad)
    counts = result.counts()
    console.print(
        f"{counts.get('ok', 0)} ok, {counts.get('skipped', 0)} skipped, {counts.get('failed', 0)} failed"
        + (" [yellow](interrupted)[/]" if result.interrupted else "")
        + f" -> {result.out_dir}/results.csv, results.json"
    )
    if result.interrupted:
        raise typer.Exit(130)
    if strict and counts.get("failed"):
        raise typer.Exit(1)


@app.command("compare")
def compare_command(
    results: list[str] = typer.Argument(..., help="Sweep output folders, or results.json / results.csv files."),
    json_out: str | None = typer.Option(None, "--json", help="Also write the ratio rows and the summary as JSON."),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 when a target is missed."),
) -> None:
    """Ours against the peer (fla) from a sweep measured side by side: peer time / our time per shape,
    geometric means and the performance targets (chunk fwd >= 1.5x, fwd+bwd >= 1.3x, no shape slower;
    recurrent fwd >= 2x)."""
    import json

    from deltalab.reports.compare import print_comparison, ratio_rows, summarise
    from deltalab.reports.load import environment_caption, load_results

    try:
        loaded = load_results(results)
    except (OSError, ValueError) as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2)
    ratios = ratio_rows(loaded.ok)
    summary = summarise(ratios)
    print_comparison(console, ratios, summary, caption=environment_caption(loaded.environments))
    if json_out:
        with open(json_out, "w") as fh:
            json.dump({"ratios": ratios.to_dict("records"), "summary": summary.to_dict("records")}, fh, indent=1)
    if strict and not summary.empty and (summary["met"] == False).any():  # noqa: E712 (None = no target)
        raise typer.Exit(1)


@app.command("profile")
def profile_command(
    variant: str = typer.Option(
        "chunk", "--variant", help="Comma-separated variants and/or peers (fla_chunk, fla_recurrent, sdpa)."
    ),
    batch: int = typer.Option(1, "--B", min=1, help="Batch size."),
    seq_len: str = typer.Option("4K", "--T", help="Sequence length, e.g. 4096 or 4K."),
    heads: int = typer.Option(16, "--H", min=1, help="Heads."),
    key_dim: int = typer.Option(128, "--K", min=1, help="Key head dim."),
    value_dim: int | None = typer.Option(None, "--V", min=1, help="Value head dim (default: K)."),
    dtype: str = typer.Option("bf16", "--dtype", help="Input dtype."),
    modes: str = typer.Option("fwd,fwd+bwd", "--mode", help="Comma-separated modes: fwd, bwd, fwd+bwd."),
    config: str | None = typer.Option(
        None, "--config", help="A JSON config for our variants (default: the op's choice)."
    ),
    calls: int = typer.Option(5, "--calls", min=1, help="Profiled calls (averaged)."),
    top: int = typer.Option(12, "--top", min=1, help="Kernels listed per table."),
    json_out: str | None = typer.Option(None, "--json", help="Also write every breakdown as JSON."),
) -> None:
    """Per-kernel time breakdown (torch.profiler) of each variant / peer on one shape: which stage of a
    call is slow. On CPU it lists operators' self time (Triton's interpreter: not GPU-like)."""
    import json

    import torch

    from deltalab.harness.peers import PEERS, is_peer
    from deltalab.harness.profile import breakdown_table, profile_variant
    from deltalab.harness.sweep import parse_dtype, parse_size
    from deltalab.harness.timing import MODES
    from deltalab.variants import registry
    from deltalab.variants.registry import Problem

    use_interpreter_without_gpu()
    _widen_console_for_logs()
    parsed = {}
    for option, parse, text in (("--T", parse_size, seq_len), ("--dtype", parse_dtype, dtype),
                                ("--config", json.loads, config or "null")):
        try:
            parsed[option] = parse(text)
        except ValueError as exc:
            console.print(f"[red]{option}: {exc}[/]")
            raise typer.Exit(2)
    problem = Problem(B=batch, T=parsed["--T"], H=heads, K=key_dim, V=value_dim or key_dim, dtype=parsed["--dtype"],
                      device="cuda" if torch.cuda.is_available() else "cpu")
    bad = [m for m in _split_csv(modes) if m not in MODES]
    if bad:
        console.print(f"[red]--mode: unknown {', '.join(bad)} (expected {', '.join(MODES)})[/]")
        raise typer.Exit(2)
    unknown = [n for n in _split_csv(variant) if n not in registry.names() and not is_peer(n)]
    if unknown:
        console.print(f"[red]--variant: unknown {', '.join(unknown)} (registered: {', '.join(registry.names())}; "
                      f"peers: {', '.join(PEERS)})[/]")
        raise typer.Exit(2)
    records = []
    for name in _split_csv(variant):
        for mode in _split_csv(modes):
            try:
                config_used = None if is_peer(name) else parsed["--config"]
                rows = profile_variant(name, problem, mode, config=config_used, calls=calls)
            except (ValueError, NotImplementedError, RuntimeError) as exc:
                console.print(f"[yellow]{name} {mode}: {str(exc)[:300]}[/]")
                continue
            console.print(breakdown_table(rows, f"{name} {mode} {problem.describe()}", top=top))
            records.append({"variant": name, "mode": mode, "problem": problem.describe(),
                            "kernels": [r.to_dict() for r in rows]})
    if json_out:
        with open(json_out, "w") as fh:
            json.dump(records, fh, indent=1)
    if not records:
        raise typer.Exit(1)


@app.command("report")
def report_command(
    results: list[str] = typer.Argument(None, help="Sweep output folders, or results.json / results.csv files."),
    output: str = typer.Option("report.html", "-o", "--output", help="The HTML file to write (self-contained)."),
    baseline: str = typer.Option("recurrent", help="Denominator of the speed-ups (figure and tables)."),
    chunk: str = typer.Option("chunk", "--chunk", help="Numerator of the chunkwise-over-recurrent speed-up figure."),
    study: list[str] = typer.Option(None, "--study", help="Optuna study name to plot (repeatable; all in --storage when omitted)."),
    storage: str | None = typer.Option(None, "--storage", help="Optuna storage of the studies: URL, .db path, journal:PATH or .log."),
    tuned: list[str] = typer.Option(None, "--tuned", help="A tuner export JSON (`deltalab export`) to plot (repeatable)."),
    title: str = typer.Option("deltalab report", "--title", help="The report's title."),
    tables: bool = typer.Option(True, "--tables/--no-tables", help="Also print the numbers as terminal tables."),
) -> None:
    """Turn sweep results (and tuning studies) into one self-contained HTML report with the paper's
    speed-up figure, throughput, roofline and tuning plots, and print the numbers as tables."""
    from deltalab.reports.build import make_report

    try:
        make_report(
            results or [], output, baseline=baseline, numerator=chunk, storage=storage, study_names=study or [],
            tuned_paths=tuned or [], title=title, console=console, tables=tables,
        )  # fmt: skip
    except (OSError, ValueError) as exc:
        console.print(f"[red]report: {exc}[/]")
        raise typer.Exit(2)


@app.command("tune")
def tune_command(
    variant: list[str] = typer.Option(None, "--variant", help="Variants to tune, comma-separated or repeated (default: the Triton variants on a GPU, torch_chunk on CPU)."),
    family: str = typer.Option("delta_rule", help="delta_rule or block_diag"),
    device: str = typer.Option(None, "--device", help="cuda, cuda:N (one worker per GPU) or cpu (default: cuda when available)."),
    quick: bool = typer.Option(False, "--quick", help="A short run: D 64,128 x T 1K,8K, 16 trials, 4 selection rounds (options given explicitly still apply)."),
    dtype: str = typer.Option(None, "--dtype", help="bfloat16, float16 or float32 (default: bfloat16 on a GPU, float32 on CPU)."),
    shape: list[str] = typer.Option(None, "--shape", help="BxTxHxK or BxTxHxKxV, with /BLOCK appended for block_diag (repeatable); overrides the grid options."),
    lengths: str = typer.Option(None, "--T", help="Sequence lengths of the grid, comma-separated, K = 1024 (default 512..16K)."),
    head_dims: str = typer.Option(None, "--D", help="Head dims of the grid, comma-separated (default 64,128,256)."),
    tokens: int = typer.Option(16384, "--tokens", help="B*T of every grid shape."),
    hidden: int = typer.Option(2048, "--hd", help="H*D of every grid shape."),
    mode: str = typer.Option("fwd+bwd", "--mode", help="What is timed: fwd, bwd or fwd+bwd."),
    trials: int = typer.Option(None, "--trials", help="Distinct configs per study, all workers together (default 64 on a GPU, 8 on CPU; grid: whole space)."),
    sampler: str = typer.Option("auto", "--sampler", help="auto (grid if the space fits the budget, else tpe), tpe, grid or random."),
    storage: str = typer.Option(None, "--storage", help="Optuna storage: URL (sqlite:///..., postgresql+psycopg2://...), journal:PATH, a .log or .db path (default out/tune.db)."),
    seed: int = typer.Option(None, "--seed", help="Sampler seed (default: random)."),
    jobs: int = typer.Option(None, "--jobs", help="Precompile processes, and configs per batch (default min(8, CPUs) on a GPU)."),
    select: bool = typer.Option(True, "--select/--no-select", help="Re-time the best configs interleaved to choose the winner."),
    top_k: int = typer.Option(3, "--top-k", help="Configs re-timed in the selection (plus the default)."),
    rounds: int = typer.Option(None, "--rounds", help="Interleaved rounds of the selection (default 8 on a GPU, 3 on CPU)."),
    warmup_ms: float = typer.Option(None, "--warmup-ms", help="Warm-up per timing (default 25 ms on a GPU, 5 on CPU)."),
    rep_ms: float = typer.Option(None, "--rep-ms", help="Timed span per timing (default 100 ms on a GPU, 20 on CPU)."),
    tag: str = typer.Option("", "--tag", help="Appended to the study names: keeps separate experiments apart in one storage."),
    keys: str | None = typer.Option(
        None, "--keys",
        help="Comma-separated config keys to search (others stay at their defaults; chunk: 0 = automatic). Each "
        "must belong to a tuned variant; a variant with none of them is searched whole.",
    ),
    json_out: str = typer.Option(None, "--json", help="Also write the outcomes as JSON to this file."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the live progress display."),
) -> None:
    """Search each variant's launch configs (Optuna; numerics-gated) for the fastest correct one per shape.

    Results stay in the storage (resumable; several workers share studies); `deltalab export` turns
    them into the JSON the op uses by default."""
    import torch

    from deltalab.tuner import display, session, space, storage as storages
    from deltalab.tuner.failures import DeviceFault
    from deltalab.tuner.study import TuneSettings
    from deltalab.variants import registry

    interpreted = use_interpreter_without_gpu()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    device_type = torch.device(device).type
    try:
        dtype_ = session.parse_dtype(dtype or ("bfloat16" if device_type == "cuda" else "float32"))
        if shape:
            shapes = [space.parse_shape(s) for item in shape for s in item.split(",") if s.strip()]
        elif lengths or head_dims or device_type == "cuda":
            ts = space.parse_int_list(lengths or ("1K,8K" if quick else ",".join(map(str, session.PAPER_LENGTHS))), "T")
            ds = space.parse_int_list(head_dims or ("64,128" if quick else ",".join(map(str, session.PAPER_HEAD_DIMS))), "D")
            shapes = space.paper_shapes(tokens, hidden, ts, ds)
        else:
            shapes = session.default_shapes(device_type)
        variants = [n.strip() for item in (variant or []) for n in item.split(",") if n.strip()]
        variants = variants or session.default_variants(family, device_type)
        for name in variants:
            registry.get(name, family)  # ValueError naming the known variants
        search_keys = tuple(_split_csv(keys))
        known_keys = {key for name in variants for key in registry.get(name, family).space}
        unknown = [key for key in search_keys if key not in known_keys]
        if unknown:
            raise ValueError(f"--keys: {', '.join(unknown)} not in the space of {', '.join(variants)} "
                             f"(keys: {', '.join(sorted(known_keys))})")
        batch = jobs or (min(8, os.cpu_count() or 1) if device_type == "cuda" else 1)
        gpu = device_type == "cuda"
        settings = TuneSettings(
            mode=mode, trials=trials or (16 if quick else 64 if gpu else 8), sampler=sampler, seed=seed, batch_size=batch,
            select=select, top_k=top_k, rounds=rounds or (4 if quick else 8 if gpu else 3),
            warmup_ms=warmup_ms or (25.0 if gpu else 5.0),
            rep_ms=rep_ms or (100.0 if gpu else 20.0), tag=tag, keys=search_keys,
        )  # fmt: skip
        store = storages.open_storage(storage)
    except ValueError as exc:
        console.print(f"[red]tune: {exc}[/]")
        raise typer.Exit(2)
    if not variants:
        console.print(f"[red]tune: no variant to tune for {family} on {device_type}; pass --variant[/]")
        raise typer.Exit(2)
    dtype_label = str(dtype_).replace("torch.", "")
    console.print(f"tuning {', '.join(variants)} on {device} ({dtype_label}), {len(shapes)} shape(s), storage {storages.describe(storage)}")
    if interpreted or device_type == "cpu":
        console.print("[yellow]no GPU: Triton kernels run under the CPU interpreter; these timings do not transfer to a GPU[/]")

    def on_skip(name, shape_, why):
        console.print(f"[dim]skip {name} {space.describe_shape(shape_)}: {why}[/]")

    try:
        with display.TuneProgress(console, enabled=progress) as live:
            outcomes = session.run_session(
                variants, shapes, dtype=dtype_, family=family, device=device, storage=store, settings=settings,
                jobs=batch, on_event=live.on_event, on_skip=on_skip,
            )  # fmt: skip
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: finished trials are stored; rerun the same command to resume[/]")
        raise typer.Exit(130)
    except DeviceFault as exc:
        console.print(f"[red]tune: {exc}[/]\nThe config is recorded as invalid; rerun the same command to resume.")
        raise typer.Exit(3)
    except ValueError as exc:
        console.print(f"[red]tune: {exc}[/]")
        raise typer.Exit(2)
    console.print(display.summary_table(outcomes))
    invalid = display.invalid_table(outcomes)
    if invalid is not None:
        console.print(invalid)
    if json_out:
        with open(json_out, "w") as f:
            f.write(display.to_json(outcomes))
    console.print("next: `deltalab export" + (f" --storage {storage}" if storage else "") + "` makes these the op's defaults")


@app.command("export")
def export_command(
    storage: str = typer.Option(None, "--storage", help="The tuning storage (default out/tune.db)."),
    out: str = typer.Option(None, "--out", help="Output file (one device) or folder (default: variants/configs/<gpu-slug>.json; CPU: out/configs/cpu.json)."),
    gpu: str = typer.Option(None, "--gpu", help="Only results of this GPU (name or slug)."),
    variant: list[str] = typer.Option(None, "--variant", help="Only these variants (comma-separated or repeated)."),
    merge: bool = typer.Option(True, "--merge/--replace", help="Merge into an existing file of the same GPU and Triton version."),
) -> None:
    """Write the tuned best configs as versioned JSON that `variant="auto"` / `config=None` calls load."""
    from pathlib import Path

    from deltalab.tuner import display, export, storage as storages

    try:
        names = [n.strip() for item in (variant or []) for n in item.split(",") if n.strip()]
        files = export.export(storages.open_storage(storage), None if out is None else Path(out), gpu=gpu,
                              variants=names or None, merge=merge)  # fmt: skip
    except (OSError, ValueError) as exc:
        console.print(f"[red]export: {exc}[/]")
        raise typer.Exit(2)
    if not files:
        console.print(f"[yellow]export: no study in {storages.describe(storage)} has a valid config to export[/]")
        raise typer.Exit(1)
    console.print(display.entries_table(files))
    for f in files:
        note = f" (kept {f.merged} earlier entries)" if f.merged else ""
        if f.replaced_existing:
            note += f" (replaced the existing file: {f.replaced_existing})"
        console.print(f"wrote {f.path}: {len(f.entries)} entries for {f.device['name']}, triton {f.triton}{note}")


def main() -> None:
    use_interpreter_without_gpu()
    app()


if __name__ == "__main__":
    main()
