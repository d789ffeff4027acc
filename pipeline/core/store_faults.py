"""Faults of a local tracking store, found before anything is trained: each is one line.

In: the path of a SQLite store (``mlflow.db``) and an experiment's artifact location.
Out: ``check_sqlite(db)`` and ``check_artifacts(location)`` return nothing, or raise a ``UserError``
naming the store and what to do: a damaged (e.g. truncated) or foreign file, a store written by a newer
MLflow, a read-only file or directory, a store another process keeps locked, an artifact folder that
cannot be written, or (for a location a tracking server serves, ``mlflow-artifacts:``) one the server
cannot write. A server that does not answer is ``pipeline.core.store.check_server``'s to report.
``disk_full(exc)`` is the one line for a disk that fills up while a training logs (None for any other
error); ``pipeline.core.cli.run_main`` prints it.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import tempfile
import uuid
from pathlib import Path
from urllib.parse import unquote, urlparse

from pipeline.core.errors import UserError

HEADER = b"SQLite format 3\x00"
# How long a store locked by another process is waited for (MLflow's own SQLite busy timeout is 20 s).
LOCK_WAIT_S = 30.0


def check_writable_dir(folder: Path, what: str, fix: str) -> None:
    """``folder`` exists (created if missing) and a file can be created in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"{what} {folder} cannot be written ({exc.strerror or exc}); {fix}") from None


def damage(db: Path) -> str | None:
    """Why ``db`` is not a sound SQLite file (None when it is): checked from its header and size, then by SQLite."""
    with open(db, "rb") as f:
        header = f.read(100)
    if not header:
        return None  # an empty file is an empty database
    if len(header) < 100 or not header.startswith(HEADER):
        return "it is not an SQLite database"
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    if header[24:28] == header[92:96] and db.stat().st_size < page_size * pages:
        return f"it is truncated: {db.stat().st_size} bytes of {page_size * pages}"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0)  # locked: the write check waits
    try:
        result = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        return None if "locked" in str(exc) else f"SQLite says: {exc}"
    finally:
        conn.close()
    return None if result == "ok" else f"SQLite says: {result}"


def unknown_schema(db: Path) -> str | None:
    """The store's schema revision when this MLflow has no migration of that name (a newer MLflow wrote it)."""
    import mlflow

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0)
    try:
        revision = conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    except (sqlite3.DatabaseError, TypeError):
        return None  # a new store, or one MLflow creates the tables in
    finally:
        conn.close()
    migrations = Path(mlflow.__file__).parent / "store" / "db_migrations" / "versions"
    known = not migrations.is_dir() or any(f.name.startswith(f"{revision}_") for f in migrations.iterdir())
    return None if known else revision


def check_sqlite(db: Path) -> None:
    """A SQLite store MLflow can open and write: sound, writable, not held locked by another process."""
    where = f"MLflow store {db}"
    check_writable_dir(db.parent, f"{where}: its directory", "SQLite writes its journal there: make it writable, "
                       "or point MLFLOW_TRACKING_URI at a writable store")
    if not db.exists():
        return
    try:
        problem = damage(db)
    except OSError as exc:
        problem = f"it cannot be read: {exc.strerror or exc}"
    if problem:
        raise UserError(f"{where} is damaged ({problem}); restore it from a backup, or move it away to start an "
                        "empty store (the DVC records then name runs it lacks: `dvc repro -f` retrains them)")
    if revision := unknown_schema(db):
        import mlflow

        raise UserError(f"{where} was written by a newer MLflow (schema {revision}, unknown to MLflow "
                        f"{mlflow.__version__}); use the MLflow version that wrote it, or another store")
    conn = sqlite3.connect(db, timeout=LOCK_WAIT_S, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc):
            raise UserError(f"{where} is locked by another process (waited {LOCK_WAIT_S:g} s); "
                            f"find it with `fuser {db}` and let it finish or stop it") from None
        raise UserError(f"{where} cannot be written ({exc}); make it writable, or point MLFLOW_TRACKING_URI "
                        "at a writable store") from None
    finally:
        conn.close()


def check_artifacts(location: str | None) -> None:
    """A local artifact location (``file:`` URI or path) is a folder this process can write."""
    if not location:
        return
    parsed = urlparse(location)
    if parsed.scheme == "mlflow-artifacts":
        check_served_artifacts(location)
        return
    if parsed.scheme not in ("", "file"):
        return  # cloud storage: its credentials and permissions are its own to report
    folder = Path(unquote(parsed.path))
    check_writable_dir(folder, "MLflow artifact location", "make it writable (or move away whatever file is "
                       "there), or point MLFLOW_TRACKING_URI at a store whose artifacts can be written")


def check_served_artifacts(location: str) -> None:
    """A tracking server stores a probe file at ``location`` (then deletes it). MLflow's HTTP retries are
    off for the probe: an answer such as "500: cannot write" is the fault itself, not an outage to wait out
    (with them, a training would find it only after about five minutes of retries, at its first artifact)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    saved = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    try:
        repo = get_artifact_repository(location.rstrip("/") + "/.write-check")
        with tempfile.TemporaryDirectory() as tmp:
            probe = Path(tmp) / f"{uuid.uuid4().hex}.txt"
            probe.write_text("written before training to check that the artifact store takes files\n")
            repo.log_artifact(str(probe))
        try:
            repo.delete_artifacts(probe.name)
        except Exception:  # noqa: BLE001 - a server without deletion keeps a 70-byte file; training can go on
            pass
    except Exception as exc:  # noqa: BLE001 - whatever the server answered, it did not store the file
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"MLflow artifact location {location} cannot be written through the tracking server "
                        f"({reason}); check that the server's --artifacts-destination is a writable folder "
                        "(see its log), or point MLFLOW_TRACKING_URI at another store") from None
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)
        else:
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = saved


def disk_full(exc: BaseException | None) -> str | None:
    """The one line for a full disk met while logging: an ``OSError`` ENOSPC anywhere in ``exc``'s chain
    (MLflow wraps some), or SQLite's "database or disk is full"; None for any other error."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            target = exc.filename2 or exc.filename  # a copy's error names its source first, its target second
            where = f" {target}" if target else ""
            return (f"the disk filled up while writing{where} (No space left on device); free space there and "
                    "rerun; the run ended FAILED and no record was written")
        if "database or disk is full" in str(exc):
            return ("the disk holding the MLflow store filled up (SQLite: database or disk is full); free space "
                    "there and rerun; no record was written")
        exc = exc.__cause__ or exc.__context__
    return None
