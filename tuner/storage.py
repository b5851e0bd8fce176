"""Where studies live: storage URLs -> Optuna storages.

* nothing given: an SQLite file, ``out/tune.db`` under the current directory (no setup; fine for one
  worker, and for a few on one host);
* ``journal:PATH`` or a path ending in ``.log``: Optuna's JournalStorage on a file (append-only log with
  a file lock) -- several worker processes on one host;
* a path ending in ``.db`` / ``.sqlite``: that SQLite file;
* any SQLAlchemy URL (``sqlite:///...``, ``postgresql+psycopg2://user:pw@host/db``, ``mysql://...``):
  Optuna's RDBStorage -- PostgreSQL for workers on several hosts.

Every trial is written to the storage as soon as it finishes, so an interrupted worker loses nothing
that finished, and a rerun with the same storage resumes the same studies.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Union

import optuna
import sqlalchemy.exc
from optuna.storages import BaseStorage

DEFAULT_PATH = Path("out") / "tune.db"
SCHEMA_ATTEMPTS = 4  # tries at creating Optuna's schema (see open_storage)
JOURNAL_PREFIX = "journal:"


def resolve_url(url: Optional[str]) -> str:
    """A canonical description of the storage ``url`` names ("journal:/abs/path" or an SQLAlchemy URL)."""
    if not url:
        return "sqlite:///" + str(DEFAULT_PATH.resolve())
    if url.startswith(JOURNAL_PREFIX):
        return JOURNAL_PREFIX + str(Path(url[len(JOURNAL_PREFIX) :]).expanduser().resolve())
    if "://" in url:
        return url
    path = Path(url).expanduser()
    if path.suffix == ".log":
        return JOURNAL_PREFIX + str(path.resolve())
    if path.suffix in (".db", ".sqlite", ".sqlite3"):
        return "sqlite:///" + str(path.resolve())
    raise ValueError(
        f"storage: {url!r} is neither an SQLAlchemy URL (sqlite:///..., postgresql+psycopg2://...), "
        "journal:PATH, a .log journal file nor a .db SQLite file"
    )


def _sqlite_connection(path: Path):
    """An SQLite connection in WAL mode: readers do not block the writer, and a commit is one append
    (synchronous=NORMAL: a crashed process loses nothing committed; only power loss could drop the
    last commits). Several processes wait up to 60 s for the write lock instead of failing at once."""
    import sqlite3

    conn = sqlite3.connect(str(path), timeout=60, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def open_storage(url: Optional[str] = None) -> BaseStorage:
    """The Optuna storage ``url`` names (see the module docstring); creates folders/files as needed."""
    resolved = resolve_url(url)
    if resolved.startswith(JOURNAL_PREFIX):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(resolved[len(JOURNAL_PREFIX) :])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    engine_kwargs: dict = {}
    if resolved.startswith("sqlite:///"):
        path = Path(resolved[len("sqlite:///") :])
        path.parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"creator": lambda: _sqlite_connection(path)}
    elif resolved.startswith("postgresql"):
        engine_kwargs = {"pool_pre_ping": True}
    for attempt in range(1, SCHEMA_ATTEMPTS):
        try:
            return optuna.storages.RDBStorage(resolved, engine_kwargs=engine_kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            # workers that start together on a new database race to create Optuna's schema (PostgreSQL: a
            # duplicate "studydirection" type or table); the loser finds it made on its next try
            time.sleep(0.5 * attempt)
    return optuna.storages.RDBStorage(resolved, engine_kwargs=engine_kwargs)


def describe(url: Union[str, None]) -> str:
    """The storage for display, with any password masked."""
    resolved = resolve_url(url)
    if "://" in resolved and "@" in resolved:
        scheme, rest = resolved.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        user = credentials.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return resolved
