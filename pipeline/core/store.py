"""Where the tracking store is and whether it answers.

In: ``MLFLOW_TRACKING_URI`` when set (a server, a database URI); otherwise a SQLite store
``mlflow.db`` with artifacts in ``mlruns/`` at the store root (``paths.store_root()``: the real
repository, even under ``dvc exp run --temp``). Credentials come only from MLflow's own variables
(``MLFLOW_TRACKING_USERNAME``, ``MLFLOW_TRACKING_PASSWORD``, ``MLFLOW_TRACKING_TOKEN``).
Out: ``tracking_uri()``, ``redact(uri)`` (for messages and tags), ``default_artifact_location``,
and ``check_server(uri)``: one line, before any training, when a server is down, refuses the
credentials or never answers.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlparse

from pipeline.core import paths
from pipeline.core.errors import UserError

DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlruns"
CONNECT_TIMEOUT_S = 5.0  # a server that is down refuses at once, or never connects within this
# A server that accepted the connection may be busy (many trainings logging at once): it gets as long to
# answer as MLflow's own client gives every request (MLFLOW_HTTP_REQUEST_TIMEOUT, 120 s by default).
DEFAULT_READ_TIMEOUT_S = 120.0


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if uri:
        return uri
    return f"sqlite:///{paths.store_root() / DB_NAME}"


def redact(uri: str) -> str:
    """The URI with any user:password@ removed, for messages and tags."""
    return re.sub(r"//[^/@]*@", "//***@", uri)


def sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):])


def default_artifact_location(uri: str) -> str | None:
    """Artifacts beside a local SQLite store; a server or database decides for itself."""
    db = sqlite_path(uri)
    if db is None:
        return None
    return (db.parent / ARTIFACTS_DIR).resolve().as_uri()


def read_timeout() -> float:
    """Seconds a connected server has to answer: MLflow's ``MLFLOW_HTTP_REQUEST_TIMEOUT``, else 120."""
    try:
        return float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT") or DEFAULT_READ_TIMEOUT_S)
    except ValueError:
        return DEFAULT_READ_TIMEOUT_S


def check_server(uri: str, connect_timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast, before any training, when a tracking server is down or refuses us; wait for a busy one."""
    if urlparse(uri).scheme not in ("http", "https"):
        return
    import requests

    base = uri.rstrip("/")
    auth = None
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        auth = (user, password)
    headers = {}
    if token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {token}"
    probe = f"{base}/api/2.0/mlflow/experiments/get-by-name"
    read = read_timeout()
    try:
        resp = requests.get(probe, params={"experiment_name": "Default"}, auth=auth, headers=headers,
                            timeout=(connect_timeout, read))
    except requests.exceptions.ReadTimeout:
        raise UserError(
            f"MLflow tracking server {redact(uri)} accepted the connection but did not answer within {read:g} s "
            "(MLFLOW_HTTP_REQUEST_TIMEOUT); check its log, or unset MLFLOW_TRACKING_URI to use the local SQLite store"
        ) from None
    except requests.RequestException as exc:
        reason = type(exc).__name__
        raise UserError(
            f"MLflow tracking server {redact(uri)} is unreachable ({reason} within {connect_timeout:g} s); "
            "start it, or unset MLFLOW_TRACKING_URI to use the local SQLite store"
        ) from None
    if resp.status_code in (401, 403):
        raise UserError(
            f"MLflow tracking server {redact(uri)} refused the credentials (HTTP {resp.status_code}); "
            "check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )
    if resp.status_code >= 500:
        raise UserError(f"MLflow tracking server {redact(uri)} answered HTTP {resp.status_code}; check its log")
