"""The work of ``deltalab report``: load the inputs, build the HTML page, write it, print the tables.

Kept out of harness/cli.py so that the command only parses options, and so that tests can call it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from rich.console import Console

# The tuner's embedded default storage (see tuner/storage.py): used when --study comes without --storage.
DEFAULT_STORAGE = "out/tune.db"


def make_report(
    results_paths: Iterable[str | Path] = (),
    output: str | Path = "report.html",
    *,
    baseline: str = "recurrent",
    numerator: str = "chunk",
    storage: Optional[str] = None,
    study_names: Iterable[str] = (),
    tuned_paths: Iterable[str | Path] = (),
    title: str = "deltalab report",
    console: Optional[Console] = None,
    tables: bool = True,
):
    """Build the report from sweep folders/results files, tuning studies and tuner exports; write it to
    ``output`` and (``tables``) print the rich tables. Returns the ``html.Report``.

    Raises ValueError / FileNotFoundError naming the bad argument (nothing given, unreadable file,
    unknown study).
    """
    from .html import build_report, write_report
    from .load import load_results, load_studies, load_tuned_export

    results_paths = list(results_paths)
    study_names = list(study_names)
    if study_names and not storage:
        if not Path(DEFAULT_STORAGE).is_file():
            raise ValueError(f"--study: give --storage (no default study database at {DEFAULT_STORAGE})")
        storage = DEFAULT_STORAGE
    results = load_results(results_paths) if results_paths else None
    studies = load_studies(storage, study_names) if storage else []
    exports = [load_tuned_export(p) for p in tuned_paths]
    report = build_report(results, studies=studies, exports=exports, title=title, numerator=numerator, baseline=baseline)
    path = write_report(output, report)
    if console is not None:
        if tables and results is not None:
            from .tables import print_tables

            print_tables(results, console, numerator=numerator, baseline=baseline)
        size_mb = path.stat().st_size / 1e6
        console.print(f"[bold]report[/]: {path} ({report.figure_count} figures, {size_mb:.1f} MB, works offline)")
        for section in report.sections:
            if section.figure is not None:
                console.print(f"  [green]shown[/]      {section.heading}", highlight=False)
            else:
                console.print(f"  [yellow]not shown[/]  {section.heading}: {section.note}", highlight=False)
    return report
