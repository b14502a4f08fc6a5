"""Study storage: an embedded journal file by default, any SQLAlchemy URL otherwise; plus a cross-process ask lock.

Why the journal file by default: measured here, 4 workers with enqueued trials on sqlite crashed 1–3 workers per run,
while Optuna's JournalFileBackend ran 40/40 trials clean. sqlite is refused for several workers for that reason.
PostgreSQL is the storage for several machines (psycopg 3, `pip install -e ".[postgres]"`).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib.util
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

KEY = "hydra.sweeper.storage"
POSTGRES_INSTALL = 'pip install -e ".[postgres]"'
# PostgreSQL advisory-lock keys (fixed 32-bit numbers derived from names), one lock per database each
ASK_LOCK_KEY = zlib.crc32(b"safety-sweeps ask")
SCHEMA_LOCK_KEY = zlib.crc32(b"safety-sweeps schema")


class StorageError(ValueError):
    """A storage URL or path that cannot be used; the message names hydra.sweeper.storage and what to do."""


def resolve_storage_url(storage: str | None, sweep_dir: str | Path) -> str:
    """The storage's address: a journal file path, or the SQLAlchemy URL with its driver made explicit.

    `postgresql://` means psycopg2 to SQLAlchemy; our extra installs psycopg 3, so such a URL becomes
    `postgresql+psycopg://` (unless psycopg2 is installed). Trials, the dashboard and analysis get this form.
    """
    if storage in (None, "", "journal"):
        return str(Path(sweep_dir) / "optuna.journal")
    url = str(storage)
    if url.startswith("postgresql://") and _has("psycopg") and not _has("psycopg2"):
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # a module set to None in sys.modules (how the tests hide a driver)
        return False


def is_journal(url: str) -> bool:
    return "://" not in url


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql:", "postgresql+", "postgres:"))


def printable(url: str) -> str:
    """The URL with any password masked, for messages."""
    if is_journal(url):
        return url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def check_url(url: str) -> URL | None:
    """Refuse, with one line, a URL whose scheme, driver or folder cannot work; before anything is opened."""
    if is_journal(url):
        folder = Path(url).parent
        if folder.exists() and not folder.is_dir():
            raise StorageError(f"{KEY}: '{folder}' (the journal file's folder) is a file; give another path")
        return None
    shown = printable(url)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StorageError(f"{KEY}: '{shown}' is neither a journal file path nor a database URL like "
                           "sqlite:///sweeps.db or postgresql://user@host/db") from None  # fmt: skip
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        raise StorageError(f"{KEY}: unknown database scheme '{parsed.drivername}' in '{shown}'; use null (a "
                           "journal file in the sweep dir), sqlite:///file.db or postgresql://user@host/db") from None
    try:
        dialect.import_dbapi()
    except ImportError as e:
        missing = e.name or "its driver"
        what = POSTGRES_INSTALL if is_postgres(url) else f"install the Python package that provides '{missing}'"
        raise StorageError(f"{KEY}: '{shown}' needs a driver that is not installed ({missing}): {what}") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        folder = Path(parsed.database).parent
        if not folder.is_dir():
            raise StorageError(f"{KEY}: no folder '{folder}' for the sqlite file in '{shown}'; create it or fix "
                               "the path")
    return parsed


def open_storage(url: str) -> BaseStorage:
    check_url(url)
    if is_journal(url):
        try:
            Path(url).parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"{KEY}: cannot create the folder of journal file '{url}': {e.strerror}") from None
        return JournalStorage(JournalFileBackend(url))
    try:
        # workers starting together on an empty database race to create Optuna's tables (measured: 'duplicate key
        # value violates unique constraint "pg_type_typname_nsp_index"'); one at a time, the others find them made
        with _pg_lock(url, SCHEMA_LOCK_KEY) if is_postgres(url) else contextlib.nullcontext():
            # pool_pre_ping survives database restarts during long sweeps
            return RDBStorage(url, engine_kwargs=None if url.startswith("sqlite") else {"pool_pre_ping": True})
    except sqlalchemy.exc.SQLAlchemyError as e:  # unreachable server, refused login, missing database
        first = (str(getattr(e, "orig", None) or e).strip().splitlines() or [type(e).__name__])[0]
        raise StorageError(f"{KEY}: cannot open '{printable(url)}': {first[:300]}; start the database server or fix "
                           "the URL") from None  # fmt: skip


def dashboard_command(url: str) -> str:
    return f"optuna-dashboard {url} --host 127.0.0.1"


@contextlib.contextmanager
def ask_lock(url: str) -> Iterator[None]:
    """Serialises 'count trials, then ask' between workers: a file lock next to a journal or sqlite file (one
    machine), a PostgreSQL advisory lock on the database (any machine; released by the server if a worker dies).

    Other server databases get no lock; there the runner marks any trial asked past the budget as surplus.
    """
    if is_postgres(url):
        with _pg_lock(url, ASK_LOCK_KEY):
            yield
        return
    path = _lock_path(url)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextlib.contextmanager
def _pg_lock(url: str, key: int) -> Iterator[None]:
    with _lock_engine(url).connect() as conn:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            yield
        finally:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})


@functools.cache
def _lock_engine(url: str) -> sqlalchemy.Engine:
    # one connection is enough: a worker takes one lock at a time; a lock lives and dies with its session
    return sqlalchemy.create_engine(url, pool_size=1, max_overflow=0, pool_pre_ping=True)


def _lock_path(url: str) -> Path | None:
    if is_journal(url):
        return Path(url + ".ask.lock")
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///") :] + ".ask.lock")
    return None


def load_study(name: str, url: str, pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url), pruner=pruner)
