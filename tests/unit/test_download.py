"""Stage ``download``: real files from local mirror folders (and one unreachable URL),
checked against the pins; every failure is one ``UserError`` naming the file and each
source tried, and leaves nothing partial behind."""

from __future__ import annotations

import gzip
import hashlib
import logging
from pathlib import Path

import pytest

from conftest import FIXTURE_MNIST, fixture_pins, tiny_params
from pipeline.core.errors import UserError
from pipeline.core.params import DownloadSettings, Params
from pipeline.data.download import download, fetch_file, sources
from pipeline.data.idx import payload_sha256

NAMES = list(fixture_pins())
LABELS = "train-labels-idx1-ubyte.gz"
IMAGES = "t10k-images-idx3-ubyte.gz"
DEAD_URL = "http://127.0.0.1:9/"  # the discard port, closed: refused at once, offline


@pytest.fixture(autouse=True)
def no_env_mirror(monkeypatch):
    """Only what a test sets itself counts as a source."""
    monkeypatch.delenv("MNIST_MIRROR", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)


@pytest.fixture
def raw(tmp_path) -> Path:
    return tmp_path / "data" / "raw"


def cfg(*mirrors, files=None) -> DownloadSettings:
    return DownloadSettings(mirrors=[str(m) for m in mirrors], files=dict(files or fixture_pins()))


def only(*names) -> dict:
    pins = fixture_pins()
    return {n: pins[n] for n in names}


def regzip(src: Path, dest: Path, **kw) -> Path:
    """The same payload compressed differently: other .gz bytes, same pin."""
    with open(dest, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", **kw) as gz:
        gz.write(gzip.decompress(src.read_bytes()))
    return dest


def make_mirror(folder: Path, names=NAMES, **gzip_kw) -> Path:
    folder.mkdir(parents=True)
    for name in names:
        regzip(FIXTURE_MNIST / name, folder / name, **{"mtime": 1, "compresslevel": 1, **gzip_kw})
    return folder


def assert_clean(raw_dir: Path, verified: set[str] = frozenset()) -> None:
    """raw_dir holds exactly ``verified`` (each matching its pin), and no temp dir sits beside it."""
    pins = fixture_pins()
    present = {p.name for p in raw_dir.iterdir()} if raw_dir.exists() else set()
    assert present == set(verified), present
    for name in present:
        assert payload_sha256(raw_dir / name) == pins[name]
    leftovers = [p.name for p in raw_dir.parent.iterdir() if p.name.startswith(".download-")]
    assert leftovers == []


def stat_id(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


# --------------------------------------------------------------------------- success


def test_fetches_all_files_from_local_mirror_and_verifies(raw):
    got = download(cfg(FIXTURE_MNIST), raw_dir=raw)
    assert got == [raw / n for n in NAMES]
    for name in NAMES:
        assert (raw / name).read_bytes() == (FIXTURE_MNIST / name).read_bytes()
    assert_clean(raw, set(NAMES))


def test_file_url_mirror(raw):
    download(cfg(FIXTURE_MNIST.as_uri(), files=only(LABELS)), raw_dir=raw)
    assert_clean(raw, {LABELS})


def test_creates_raw_dir_with_parents(tmp_path):
    raw_dir = tmp_path / "a" / "b" / "raw"
    download(cfg(FIXTURE_MNIST, files=only(LABELS)), raw_dir=raw_dir)
    assert_clean(raw_dir, {LABELS})


def test_env_mirror_is_tried_before_params_mirrors(raw, tmp_path, monkeypatch):
    # Two good mirrors whose .gz bytes differ (same payloads): the copy in raw tells which one served.
    env_mirror = make_mirror(tmp_path / "env-mirror", mtime=111)
    params_mirror = make_mirror(tmp_path / "params-mirror", mtime=222)
    monkeypatch.setenv("MNIST_MIRROR", str(env_mirror))
    assert sources(cfg(params_mirror)) == [str(env_mirror), str(params_mirror)]
    download(cfg(params_mirror), raw_dir=raw)
    for name in NAMES:
        assert (raw / name).read_bytes() == (env_mirror / name).read_bytes()
        assert (raw / name).read_bytes() != (params_mirror / name).read_bytes()
    assert_clean(raw, set(NAMES))


def test_params_mirror_used_when_env_mirror_fails(raw, tmp_path, monkeypatch, caplog):
    missing = tmp_path / "no-such-mirror"
    monkeypatch.setenv("MNIST_MIRROR", str(missing))
    caplog.set_level(logging.WARNING, logger="pipeline.data.download")
    download(cfg(FIXTURE_MNIST, files=only(LABELS)), raw_dir=raw)
    assert_clean(raw, {LABELS})
    assert str(missing) in caplog.text and LABELS in caplog.text


def test_blank_env_mirror_is_ignored(monkeypatch):
    monkeypatch.setenv("MNIST_MIRROR", "   ")
    assert sources(cfg("somewhere")) == ["somewhere"]


def test_falls_through_bad_mirror_to_good_one(raw, tmp_path, caplog):
    bad = tmp_path / "bad-mirror"
    bad.mkdir()
    (bad / LABELS).write_bytes((FIXTURE_MNIST / LABELS).read_bytes()[:50])  # truncated archive
    caplog.set_level(logging.WARNING, logger="pipeline.data.download")
    download(cfg(bad, FIXTURE_MNIST, files=only(LABELS)), raw_dir=raw)
    assert_clean(raw, {LABELS})
    assert str(bad) in caplog.text


# --------------------------------------------------------------------------- failures


def test_checksum_mismatch_names_file_and_every_source(raw, tmp_path):
    second = make_mirror(tmp_path / "second", names=[IMAGES])
    files = only(LABELS, IMAGES)
    files[IMAGES] = hashlib.sha256(b"not the payload").hexdigest()
    with pytest.raises(UserError) as info:
        download(cfg(FIXTURE_MNIST, second, files=files), raw_dir=raw)
    msg = str(info.value)
    assert IMAGES in msg
    assert "tried 2 source(s)" in msg
    assert str(FIXTURE_MNIST) in msg and str(second) in msg
    assert msg.count("does not match the pin") == 2
    # The file fetched before the failing one is kept (it verified); the bad one is not there.
    assert_clean(raw, {LABELS})


def test_missing_mirror_folder(raw, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError) as info:
        download(cfg(missing, files=only(LABELS)), raw_dir=raw)
    msg = str(info.value)
    assert LABELS in msg and str(missing) in msg and "does not exist" in msg
    assert_clean(raw)


def test_missing_file_in_mirror(raw, tmp_path):
    partial = make_mirror(tmp_path / "partial", names=[IMAGES])
    with pytest.raises(UserError) as info:
        download(cfg(partial, files=only(IMAGES, LABELS)), raw_dir=raw)
    msg = str(info.value)
    assert f"could not get a verified copy of {LABELS}" in msg
    assert str(partial / LABELS) in msg and "does not exist" in msg
    assert_clean(raw, {IMAGES})


@pytest.mark.parametrize("damage", ["truncated_gz", "flipped_payload", "wrong_magic"])
def test_corrupt_mirror_file_leaves_nothing(raw, tmp_path, damage):
    bad = tmp_path / "bad"
    bad.mkdir()
    data = gzip.decompress((FIXTURE_MNIST / IMAGES).read_bytes())
    if damage == "truncated_gz":
        (bad / IMAGES).write_bytes((FIXTURE_MNIST / IMAGES).read_bytes()[:-1000])
    elif damage == "flipped_payload":
        (bad / IMAGES).write_bytes(gzip.compress(data[:5000] + bytes([data[5000] ^ 0xFF]) + data[5001:]))
    else:
        (bad / IMAGES).write_bytes(gzip.compress(b"\x00\x00\x08\x01" + data[4:]))
    with pytest.raises(UserError) as info:
        download(cfg(bad, files=only(IMAGES)), raw_dir=raw)
    assert IMAGES in str(info.value) and str(bad) in str(info.value)
    assert_clean(raw)


def test_unreachable_url_is_reported_among_sources(raw, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError) as info:
        download(cfg(DEAD_URL, missing, files=only(LABELS)), raw_dir=raw)
    msg = str(info.value)
    assert LABELS in msg and "tried 2 source(s)" in msg
    assert DEAD_URL in msg and str(missing) in msg
    # The URL's reason comes first, the folder's second: the order they were tried in.
    assert msg.index(DEAD_URL) < msg.index(str(missing))
    assert_clean(raw)


def test_no_sources_at_all(raw):
    with pytest.raises(UserError, match=rf"{LABELS}: no source to fetch from; set MNIST_MIRROR"):
        download(cfg(files=only(LABELS)), raw_dir=raw)
    assert_clean(raw)


@pytest.mark.parametrize("bad_cfg, words", [
    ({"mirrors": [], "files": {}}, "download.files"),
    ({"mirrors": []}, "download.files"),
    ({"mirrors": "a/folder", "files": {LABELS: "0" * 64}}, "download.mirrors"),
])
def test_invalid_config(raw, bad_cfg, words):
    with pytest.raises(UserError, match=words):
        Params.from_dict({**tiny_params(), "download": bad_cfg})


# --------------------------------------------------------------------------- files already present


def test_present_verified_file_is_not_fetched_again(raw, caplog):
    download(cfg(FIXTURE_MNIST), raw_dir=raw)
    before = {n: stat_id(raw / n) for n in NAMES}
    caplog.set_level(logging.INFO, logger="pipeline.data.download")
    # No source at all: it only works if nothing is fetched.
    assert download(cfg(), raw_dir=raw) == [raw / n for n in NAMES]
    assert {n: stat_id(raw / n) for n in NAMES} == before
    assert caplog.text.count("present and verified") == len(NAMES)
    assert "fetched from" not in caplog.text
    assert_clean(raw, set(NAMES))


def test_present_file_kept_even_if_a_mirror_differs(raw, tmp_path):
    download(cfg(FIXTURE_MNIST, files=only(LABELS)), raw_dir=raw)
    before = stat_id(raw / LABELS)
    other = make_mirror(tmp_path / "other", names=[LABELS])
    download(cfg(other, files=only(LABELS)), raw_dir=raw)
    assert stat_id(raw / LABELS) == before
    assert (raw / LABELS).read_bytes() == (FIXTURE_MNIST / LABELS).read_bytes()


def _corrupt(path: Path, how: str) -> None:
    gz = path.read_bytes()
    data = gzip.decompress(gz)
    if how == "truncated_gz":
        path.write_bytes(gz[: len(gz) // 2])
    elif how == "flipped_payload":  # structurally valid IDX, wrong content
        path.write_bytes(gzip.compress(data[:-1] + bytes([data[-1] ^ 0x01])))
    elif how == "padded_payload":
        path.write_bytes(gzip.compress(data + b"\x00"))
    elif how == "bad_deflate":  # a valid gzip header, then a reserved deflate block type
        path.write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 4 + b"\x00\xff" + b"\x07" + b"\x00" * 16)
    elif how == "empty":
        path.write_bytes(b"")
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["truncated_gz", "flipped_payload", "padded_payload", "bad_deflate", "empty"])
def test_corrupt_file_in_raw_is_reported_and_fetched_again(raw, caplog, how):
    download(cfg(FIXTURE_MNIST), raw_dir=raw)
    _corrupt(raw / IMAGES, how)
    kept = {n: stat_id(raw / n) for n in NAMES if n != IMAGES}
    caplog.set_level(logging.INFO, logger="pipeline.data.download")
    download(cfg(FIXTURE_MNIST), raw_dir=raw)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text
    assert IMAGES in warnings[0].getMessage() and "fails verification" in warnings[0].getMessage()
    assert f"{IMAGES}: fetched from {FIXTURE_MNIST}" in caplog.text
    assert (raw / IMAGES).read_bytes() == (FIXTURE_MNIST / IMAGES).read_bytes()
    assert {n: stat_id(raw / n) for n in kept} == kept  # the good ones were left alone
    assert_clean(raw, set(NAMES))


def test_corrupt_file_in_raw_with_no_good_source_is_removed(raw, tmp_path, caplog):
    download(cfg(FIXTURE_MNIST, files=only(LABELS)), raw_dir=raw)
    _corrupt(raw / LABELS, "flipped_payload")
    caplog.set_level(logging.WARNING, logger="pipeline.data.download")
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError) as info:
        download(cfg(missing, files=only(LABELS)), raw_dir=raw)
    assert LABELS in str(info.value) and str(missing) in str(info.value)
    assert "fails verification" in caplog.text
    assert_clean(raw)  # the corrupt copy is not left to be mistaken for data


def test_fetch_file_direct(raw):
    raw.mkdir(parents=True)
    pin = fixture_pins()[LABELS]
    path = fetch_file(LABELS, pin, [str(FIXTURE_MNIST)], raw)
    assert path == raw / LABELS and payload_sha256(path) == pin
    assert_clean(raw, {LABELS})
