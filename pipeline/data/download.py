"""Stage ``download``: fetch the four MNIST files and verify them.

In: ``params.yaml`` section ``download`` (``mirrors``: base URLs or folders;
``files``: name -> SHA-256 of the decompressed IDX payload), and the optional
``MNIST_MIRROR`` environment variable (a folder or a URL), tried first.
Out: ``data/raw/<name>`` for every pinned file, each verified.

A file already in ``data/raw`` that verifies is kept; one that does not is
reported and fetched again. Every attempt writes to a temporary name outside
``data/raw`` and is renamed into place only after it verified, so a failure
leaves nothing partial behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from pipeline.core import paths
from pipeline.core.cli import run_main
from pipeline.core.errors import UserError
from pipeline.core.params import DownloadSettings, Params
from pipeline.data.idx import IdxError, payload_sha256

log = logging.getLogger("pipeline.data.download")


def _is_url(source: str) -> bool:
    return urlparse(source).scheme in ("http", "https", "ftp")


def _local_dir(source: str) -> Path:
    if source.startswith("file://"):
        source = urlparse(source).path
    path = Path(source).expanduser()
    if not path.is_absolute() and not path.exists() and os.environ.get("DVC_ROOT"):
        # Under `dvc exp run --temp` the cwd is a copy; a relative mirror means the real root.
        path = Path(os.environ["DVC_ROOT"]) / path
    return path


def sources(settings: DownloadSettings) -> list[str]:
    env = os.environ.get("MNIST_MIRROR", "").strip()
    return ([env] if env else []) + list(settings.mirrors)


def _fetch_to(source: str, name: str, tmp_dir: Path) -> Path:
    """Put ``name`` from ``source`` into ``tmp_dir``; raise with a short reason on failure."""
    if _is_url(source):
        import pooch

        base = source if source.endswith("/") else source + "/"
        fetcher = pooch.create(path=tmp_dir, base_url=base, registry={name: None}, retry_if_failed=2)
        downloader = pooch.HTTPDownloader(progressbar=True, timeout=60)
        return Path(fetcher.fetch(name, downloader=downloader))
    folder = _local_dir(source)
    if not folder.is_dir():
        raise FileNotFoundError(f"mirror folder {folder} does not exist")
    src = folder / name
    if not src.is_file():
        raise FileNotFoundError(f"{src} does not exist")
    dst = tmp_dir / name
    shutil.copyfile(src, dst)
    return dst


def _verify(path: Path, name: str, sha256: str) -> None:
    got = payload_sha256(path)
    if got != sha256:
        raise IdxError(f"payload SHA-256 {got[:16]}… does not match the pin {sha256[:16]}…")


def fetch_file(name: str, sha256: str, srcs: list[str], raw_dir: Path) -> Path:
    dest = raw_dir / name
    if dest.exists():
        try:
            _verify(dest, name, sha256)
            log.info("%s: present and verified", name)
            return dest
        except IdxError as exc:
            log.warning("%s in %s fails verification (%s); fetching it again", name, raw_dir, exc)
            dest.unlink()
    if not srcs:
        raise UserError(f"{name}: no source to fetch from; set MNIST_MIRROR or 'download.mirrors' in params.yaml")
    tried = []
    for source in srcs:
        # A sibling of raw_dir: same file system (atomic rename), never inside the output.
        tmp_dir = Path(tempfile.mkdtemp(prefix=".download-", dir=raw_dir.parent))
        try:
            fetched = _fetch_to(source, name, tmp_dir)
            _verify(fetched, name, sha256)
            os.replace(fetched, dest)
            log.info("%s: fetched from %s and verified", name, source)
            return dest
        except Exception as exc:  # every failure of one source is a reason to try the next
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            tried.append(f"{source}: {reason}")
            log.warning("%s: %s failed: %s", name, source, reason)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    # One line, like every UserError: a log collector or `dvc repro`'s summary shows it whole.
    raise UserError(f"could not get a verified copy of {name}; tried {len(tried)} source(s): " + "; ".join(tried))


def download(settings: DownloadSettings, raw_dir: Path = paths.RAW) -> list[Path]:
    raw_dir.mkdir(parents=True, exist_ok=True)
    srcs = sources(settings)
    return [fetch_file(name, sha, srcs, raw_dir) for name, sha in settings.files.items()]


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    run_main(lambda: download(Params.load().download))


if __name__ == "__main__":
    main()
