"""The data layer: CIFAR in both layouts through every data_dir form, safe unpickling and extraction,
validation, the offline message, and the download path against a local HTTP server. All offline and fast:
the archives are a few records each, built by ``data_fixtures``."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import pickle
import re
import socket
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import chw_rows, write_archive, write_cifar

from npvit.data import DATASETS, SOURCES, DataError, Dataset, Source, default_cache_dir, load_dataset
from npvit.data import archive as archive_mod
from npvit.data import download as download_mod
from npvit.data.safe_pickle import safe_load
from npvit.cli.progress import ProgressBar


def _closed_port_url(name: str) -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{name}"  # nothing listens there: connection refused at once


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test may reach the real web or the real cache: sources point at a closed local port, the cache
    at a temporary folder, and proxies are bypassed for the local test server."""
    for dataset, source in list(SOURCES.items()):
        monkeypatch.setitem(SOURCES, dataset, Source(_closed_port_url(source.filename), source.md5, source.filename))
    monkeypatch.setenv("NPVIT_CACHE", str(tmp_path / "default-cache"))
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def check_loaded(ds: Dataset, exp, label_mode: str = "fine") -> None:
    assert ds.name == exp.layout.dataset
    for split, x, y in (("train", ds.x_train, ds.y_train), ("test", ds.x_test, ds.y_test)):
        assert x.dtype == np.uint8 and x.flags.c_contiguous and x.shape[1:] == (32, 32, 3)
        assert y.dtype == np.int64
        np.testing.assert_array_equal(x, getattr(exp, f"x_{split}"))
        np.testing.assert_array_equal(y, exp.labels(split, label_mode))
    assert ds.class_names == exp.class_names(label_mode)
    assert ds.num_classes == len(exp.class_names(label_mode))


# ------------------------------------------------------------------------------------------ data_dir forms

FORMS = ["archive", "folder-with-archive", "extracted", "folder-with-extracted"]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("kind", ["binary", "python"])
@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_every_data_dir_form(tmp_path: Path, dataset: str, kind: str, form: str) -> None:
    src = tmp_path / "src"
    exp = write_cifar(src, dataset, kind)
    if form.endswith("archive"):
        archive = write_archive(exp.folder, tmp_path / "dl" / exp.layout.archive) if form == "folder-with-archive" \
            else write_archive(exp.folder, tmp_path / "my-copy.tar.gz")  # any name works when given directly
        data_dir = archive.parent if form == "folder-with-archive" else archive
    else:
        data_dir = exp.folder if form == "extracted" else src
    ds = load_dataset(dataset, data_dir=data_dir, cache_dir=tmp_path / "cache", download=False)
    check_loaded(ds, exp)
    assert not (tmp_path / "cache" / exp.layout.archive).exists()  # nothing downloaded or copied


@pytest.mark.parametrize("kind", ["binary", "python"])
def test_cifar100_coarse_and_fine(tmp_path: Path, kind: str) -> None:
    exp = write_cifar(tmp_path, "cifar100", kind)
    fine = load_dataset("cifar100", data_dir=tmp_path, cache_dir=tmp_path / "c")
    coarse = load_dataset("cifar100", data_dir=tmp_path, cache_dir=tmp_path / "c", label_mode="coarse")
    check_loaded(fine, exp, "fine")
    check_loaded(coarse, exp, "coarse")
    assert (fine.num_classes, coarse.num_classes) == (100, 20)


def test_python2_pickles_as_in_the_official_archive(tmp_path: Path) -> None:
    """The official python-layout files come from Python 2: numpy.core globals and str opcodes."""
    for dataset in ("cifar10", "cifar100"):
        exp = write_cifar(tmp_path / dataset, dataset, "python", py2=True)
        assert b"numpy.core.multiarray\n_reconstruct" in (exp.folder / exp.layout.test[0]).read_bytes()
        check_loaded(load_dataset(dataset, data_dir=exp.folder), exp)


def test_binary_is_preferred_when_both_layouts_are_there(tmp_path: Path) -> None:
    binary = write_cifar(tmp_path, "cifar10", "binary", seed=1)
    python = write_cifar(tmp_path, "cifar10", "python", seed=2)
    check_loaded(load_dataset("cifar10", data_dir=tmp_path), binary)
    # an archived binary copy still beats an extracted python one
    write_archive(binary.folder, tmp_path / binary.layout.archive)
    os.rename(binary.folder, tmp_path / "elsewhere")
    check_loaded(load_dataset("cifar10", data_dir=tmp_path, cache_dir=tmp_path / "c"), binary)
    (tmp_path / binary.layout.archive).unlink()
    check_loaded(load_dataset("cifar10", data_dir=tmp_path), python)


def test_archive_is_extracted_once_and_again_when_it_changes(tmp_path: Path, monkeypatch) -> None:
    exp = write_cifar(tmp_path / "a", "cifar10", "binary", seed=1)
    archive = write_archive(exp.folder, tmp_path / "cifar-10-binary.tar.gz")
    cache = tmp_path / "cache"
    check_loaded(load_dataset("cifar10", data_dir=archive, cache_dir=cache), exp)
    extracted = list((cache / "extracted").iterdir())
    assert [p.name.startswith("cifar-10-binary-") for p in extracted] == [True]  # no temporary folders left

    calls = []
    real = archive_mod.extract_atomically
    monkeypatch.setattr(archive_mod, "extract_atomically", lambda *a, **k: calls.append(a) or real(*a, **k))
    check_loaded(load_dataset("cifar10", data_dir=archive, cache_dir=cache), exp)
    assert calls == []  # reused

    exp2 = write_cifar(tmp_path / "b", "cifar10", "binary", per_file=2, seed=2)
    write_archive(exp2.folder, archive)
    os.utime(archive, ns=(1, 1))  # a different mtime even on coarse-clock filesystems
    check_loaded(load_dataset("cifar10", data_dir=archive, cache_dir=cache), exp2)
    assert len(calls) == 1 and list((cache / "extracted").iterdir()) == extracted


# ------------------------------------------------------------------------------------------ unpickling

class _System:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Eval:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("protocol", [0, 2, 3, 5])
@pytest.mark.parametrize("evil", [_System, _Eval])
def test_malicious_pickle_is_refused_and_not_run(tmp_path: Path, evil, protocol: int) -> None:
    marker = tmp_path / "pwned"
    exp = write_cifar(tmp_path, "cifar10", "python")
    payload = pickle.dumps({"data": evil(marker), "labels": []}, protocol=protocol)
    (exp.folder / "data_batch_3").write_bytes(payload)
    refused = r"refused to load .*data_batch_3.*((posix|os)\.system|(__)?builtin(s|__)\.eval)"
    with pytest.raises(DataError, match=refused):
        load_dataset("cifar10", data_dir=exp.folder)
    assert not marker.exists()


@pytest.mark.parametrize("module, name", [("builtins", "exec"), ("subprocess", "Popen"), ("numpy", "load"),
                                          ("numpy.core.multiarray", "scalar"), ("builtins", "getattr")])
def test_only_array_globals_are_resolved(tmp_path: Path, module: str, name: str) -> None:
    path = tmp_path / "p"
    path.write_bytes(b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")R.")  # call module.name()
    with pytest.raises(DataError, match=re.escape(f"{module}.{name}")):
        safe_load(path)


def test_garbage_and_truncated_pickles(tmp_path: Path) -> None:
    exp = write_cifar(tmp_path, "cifar10", "python")
    good = (exp.folder / "test_batch").read_bytes()
    for bad in (b"not a pickle", good[: len(good) // 2], pickle.dumps([1, 2, 3])):
        (exp.folder / "test_batch").write_bytes(bad)
        with pytest.raises(DataError, match="test_batch"):
            load_dataset("cifar10", data_dir=exp.folder)


# ------------------------------------------------------------------------------------------ extraction

def _tar_with(path: Path, *members: tuple[tarfile.TarInfo, bytes | None]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize("members", [
    [(_info("cifar-10-batches-bin/../../escaped"), b"x")],
    [(_info("/tmp/npvit-test-absolute-escaped"), b"x")],
    [(_info("cifar-10-batches-bin/link", tarfile.SYMTYPE, "/tmp"), None)],
    [(_info("cifar-10-batches-bin/link", tarfile.SYMTYPE, "../.."), None),
     (_info("cifar-10-batches-bin/link/escaped"), b"x")],
    [(_info("cifar-10-batches-bin/hard", tarfile.LNKTYPE, "/etc/passwd"), None)],
    [(_info("cifar-10-batches-bin/fifo", tarfile.FIFOTYPE), None)],
], ids=["dotdot", "absolute", "symlink-out", "write-through-symlink", "hardlink-out", "fifo"])
def test_unsafe_members_are_refused(tmp_path: Path, members) -> None:
    data = tmp_path / "data"
    data.mkdir()
    archive = _tar_with(data / "cifar-10-binary.tar.gz", (_info("cifar-10-batches-bin/ok"), b"fine"), *members)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="refused to extract"):
        load_dataset("cifar10", data_dir=archive, cache_dir=cache)
    assert not (tmp_path / "escaped").exists() and not (data / "escaped").exists()
    assert not Path("/tmp/npvit-test-absolute-escaped").exists()
    assert list((cache / "extracted").iterdir()) == []  # the temporary folder is gone, nothing looks complete


def test_truncated_archive_leaves_nothing_that_looks_extracted(tmp_path: Path) -> None:
    exp = write_cifar(tmp_path / "src", "cifar10", "binary")
    archive = write_archive(exp.folder, tmp_path / "cifar-10-binary.tar.gz")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match="archive .* is corrupt: .*truncated"):
        load_dataset("cifar10", data_dir=archive, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / "extracted").iterdir()) == []
    (tmp_path / "junk.tar.gz").write_bytes(b"this is not an archive")
    with pytest.raises(DataError, match="junk.tar.gz"):
        load_dataset("cifar10", data_dir=tmp_path / "junk.tar.gz", cache_dir=tmp_path / "cache")


def test_interrupted_extraction_is_invisible(tmp_path: Path, monkeypatch) -> None:
    exp = write_cifar(tmp_path / "src", "cifar10", "binary")
    archive = write_archive(exp.folder, tmp_path / "cifar-10-binary.tar.gz")
    real_copy = archive_mod.shutil.copyfileobj
    calls = []

    def crash_on_third_file(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # not an Exception: like a crash, nothing may catch it
        return real_copy(*args, **kwargs)

    monkeypatch.setattr(archive_mod.shutil, "copyfileobj", crash_on_third_file)
    with pytest.raises(KeyboardInterrupt):
        load_dataset("cifar10", data_dir=archive, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / "extracted").iterdir()) == []
    monkeypatch.setattr(archive_mod.shutil, "copyfileobj", real_copy)
    check_loaded(load_dataset("cifar10", data_dir=archive, cache_dir=tmp_path / "cache"), exp)


def test_leftovers_of_a_crashed_extraction_are_cleaned_up(tmp_path: Path) -> None:
    exp = write_cifar(tmp_path / "src", "cifar10", "binary")
    archive = write_archive(exp.folder, tmp_path / "cifar-10-binary.tar.gz")
    check_loaded(load_dataset("cifar10", data_dir=archive, cache_dir=tmp_path / "cache"), exp)
    (dest,) = (tmp_path / "cache" / "extracted").iterdir()
    old, fresh = (dest.parent / f".{dest.name}.{tag}.tmp" for tag in ("old", "fresh"))
    for leftover in (old, fresh):
        (leftover / "cifar-10-batches-bin").mkdir(parents=True)  # as a process killed mid-extraction leaves
    os.utime(old, (0, 0))
    archive.touch()  # changed: extracted again
    os.utime(archive, ns=(1, 1))
    check_loaded(load_dataset("cifar10", data_dir=archive, cache_dir=tmp_path / "cache"), exp)
    assert not old.exists() and fresh.exists()  # a fresh one may belong to a live process


def test_archive_without_the_dataset(tmp_path: Path) -> None:
    exp = write_cifar(tmp_path / "src", "cifar10", "binary")
    archive = write_archive(exp.folder, tmp_path / "x.tar.gz")
    with pytest.raises(DataError, match=r"does not contain CIFAR-100.*holds CIFAR-10 instead"):
        load_dataset("cifar100", data_dir=archive, cache_dir=tmp_path / "cache")


# ------------------------------------------------------------------------------------------ validation

def test_malformed_binary_files(tmp_path: Path) -> None:
    exp = write_cifar(tmp_path, "cifar100", "binary")
    train = exp.folder / "train.bin"
    good = train.read_bytes()
    train.write_bytes(good + b"\x00")
    with pytest.raises(DataError, match=r"train.bin is \d+ bytes, not a whole number of 3074-byte records"):
        load_dataset("cifar100", data_dir=tmp_path)
    train.write_bytes(b"")
    with pytest.raises(DataError, match="train.bin is 0 bytes"):
        load_dataset("cifar100", data_dir=tmp_path)
    bad = bytearray(good)
    bad[3074 + 1] = 100  # the second record's fine label
    train.write_bytes(bytes(bad))
    with pytest.raises(DataError, match=r"train.bin has fine labels outside 0..99"):
        load_dataset("cifar100", data_dir=tmp_path)
    bad[3074 + 1], bad[0] = 5, 20  # now the first record's coarse label
    train.write_bytes(bytes(bad))
    with pytest.raises(DataError, match=r"coarse labels outside 0..19"):
        load_dataset("cifar100", data_dir=tmp_path, label_mode="coarse")
    train.write_bytes(good)
    (exp.folder / "coarse_label_names.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match="lists 2 class names, expected 20"):
        load_dataset("cifar100", data_dir=tmp_path, label_mode="coarse")


def test_cifar10_labels_out_of_range_and_missing_files(tmp_path: Path) -> None:
    exp = write_cifar(tmp_path, "cifar10", "binary")
    path = exp.folder / "data_batch_2.bin"
    raw = bytearray(path.read_bytes())
    raw[0] = 10
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"data_batch_2.bin has labels outside 0..9"):
        load_dataset("cifar10", data_dir=tmp_path)
    path.unlink()
    (exp.folder / "batches.meta.txt").unlink()
    with pytest.raises(DataError, match=r"not a complete binary cifar10 folder: missing data_batch_2.bin, "
                                        r"batches.meta.txt"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_malformed_python_batches(tmp_path: Path) -> None:
    exp = write_cifar(tmp_path, "cifar10", "python")
    path = exp.folder / "data_batch_1"
    cases = [
        ({b"data": np.zeros((3, 3072), np.float32), b"labels": [0, 1, 2]}, "uint8 array"),
        ({b"data": np.zeros((3, 100), np.uint8), b"labels": [0, 1, 2]}, "uint8 array"),
        ({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1]}, "should hold 3 integers"),
        ({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1, 10]}, "outside 0..9"),
        ({b"data": np.zeros((3, 3072), np.uint8)}, "no 'labels' entry"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [b"a", b"b"]}, "should hold 2 integers"),
    ]
    for batch, message in cases:
        path.write_bytes(pickle.dumps(batch, protocol=3))
        with pytest.raises(DataError, match=message):
            load_dataset("cifar10", data_dir=tmp_path)
    path.write_bytes(pickle.dumps({"data": chw_rows(exp.x_train[:3]), "labels": [0, 1, 2]}, protocol=4))
    load_dataset("cifar10", data_dir=tmp_path)  # str keys (a re-pickled copy) are fine too


# ------------------------------------------------------------------------------------------ not found

def test_data_dir_without_the_data(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("cifar10", data_dir=tmp_path / "nope")
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", data_dir=tmp_path)
    msg = str(err.value)
    for expected in ("no CIFAR-10 data found in", str(tmp_path / "cifar-10-batches-bin"),
                     str(tmp_path / "cifar-10-python.tar.gz"), "--data-dir PATH", "cifar-10-binary.tar.gz"):
        assert expected in msg
    write_cifar(tmp_path, "cifar100", "binary")
    with pytest.raises(DataError, match="holds CIFAR-100 instead"):
        load_dataset("cifar10", data_dir=tmp_path)


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
@pytest.mark.parametrize("download", [True, False])
def test_offline_without_a_copy_says_what_to_do(tmp_path: Path, dataset: str, download: bool, monkeypatch) -> None:
    cache = tmp_path / "cache"
    if not download:
        monkeypatch.setattr(download_mod.urllib.request, "urlopen", lambda *a, **k: pytest.fail("network used"))
    with pytest.raises(DataError) as err:
        load_dataset(dataset, cache_dir=cache, download=download, progress=False)
    msg = str(err.value)
    name = SOURCES[dataset].filename
    assert str(cache / name) in msg and "--data-dir PATH" in msg and "NPVIT_CACHE" in msg
    assert SOURCES[dataset].url in msg  # (a closed local port here, see the ``offline`` fixture)
    assert ("switched off" in msg) != download
    if download:
        assert "refused" in msg.lower() or "offline" in msg
    assert not (cache / name).exists() and not (cache / (name + ".part")).exists()


def test_default_cache_dir(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NPVIT_CACHE", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x"
    monkeypatch.delenv("NPVIT_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "npvit"


def test_bad_arguments() -> None:
    assert DATASETS == ("cifar10", "cifar100", "synthetic")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="label_mode"):
        load_dataset("cifar100", label_mode="medium")
    with pytest.raises(ValueError, match="coarse"):
        load_dataset("cifar10", label_mode="coarse")


# ------------------------------------------------------------------------------------------ download

class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files``; ``server.mode``: "ok" (honours Range), "norange" (ignores it) or
    "truncate" (promises the whole file, sends half, hangs up). Records each request's Range header."""

    protocol_version = "HTTP/1.0"  # one request per connection; closing it ends the body

    def do_GET(self) -> None:
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        data = server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if m and server.mode == "ok":
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.mode == "truncate":
            body = body[: len(body) // 2]
        self.wfile.write(body)
        server.sent += len(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.files, srv.mode, srv.requests, srv.sent = {}, "ok", [], 0
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


@pytest.fixture
def served(server, tmp_path: Path, monkeypatch):
    """A tiny cifar-10-binary.tar.gz served locally, with SOURCES["cifar10"] pointing at it."""
    exp = write_cifar(tmp_path / "src", "cifar10", "binary", per_file=4)
    data = write_archive(exp.folder, tmp_path / "src" / "cifar-10-binary.tar.gz").read_bytes()
    server.files["/cifar-10-binary.tar.gz"] = data
    url = f"http://127.0.0.1:{server.server_address[1]}/cifar-10-binary.tar.gz"
    monkeypatch.setitem(SOURCES, "cifar10", Source(url, hashlib.md5(data).hexdigest(), "cifar-10-binary.tar.gz"))
    return exp, data, tmp_path / "cache"


def test_download_verifies_and_is_reused(served, server, monkeypatch) -> None:
    exp, data, cache = served
    check_loaded(load_dataset("cifar10", cache_dir=cache, progress=False), exp)
    archive = cache / "cifar-10-binary.tar.gz"
    assert archive.read_bytes() == data and not (cache / "cifar-10-binary.tar.gz.part").exists()
    assert (cache / "cifar-10-binary.tar.gz.md5ok").read_text().startswith(hashlib.md5(data).hexdigest())
    assert server.requests == [("/cifar-10-binary.tar.gz", None)]

    monkeypatch.setattr(download_mod, "md5sum", lambda p: pytest.fail("re-hashed a verified archive"))
    check_loaded(load_dataset("cifar10", cache_dir=cache, progress=False), exp)
    assert len(server.requests) == 1  # neither downloaded nor hashed again


def test_checksum_mismatch_leaves_nothing(served, monkeypatch) -> None:
    _, _, cache = served
    monkeypatch.setitem(SOURCES, "cifar10", Source(SOURCES["cifar10"].url, "0" * 32, "cifar-10-binary.tar.gz"))
    with pytest.raises(DataError, match=r"(?s)MD5 is [0-9a-f]{32}, not the published 0{32}.*--data-dir PATH"):
        load_dataset("cifar10", cache_dir=cache, progress=False)
    assert sorted(p.name for p in cache.iterdir()) == []


def test_truncated_transfer_keeps_only_the_part(served, server) -> None:
    exp, data, cache = served
    server.mode = "truncate"
    with pytest.raises(DataError, match=rf"(?s)broke off after {len(data) // 2} of {len(data)} bytes.*kept"):
        load_dataset("cifar10", cache_dir=cache, progress=False)
    assert sorted(p.name for p in cache.iterdir()) == ["cifar-10-binary.tar.gz.part"]
    assert (cache / "cifar-10-binary.tar.gz.part").read_bytes() == data[: len(data) // 2]
    server.mode = "ok"  # the next run resumes where this one stopped
    check_loaded(load_dataset("cifar10", cache_dir=cache, progress=False), exp)
    assert server.requests[-1][1] == f"bytes={len(data) // 2}-"


def test_resume_a_partial_download(served, server) -> None:
    exp, data, cache = served
    cache.mkdir()
    quarter = len(data) // 4
    (cache / "cifar-10-binary.tar.gz.part").write_bytes(data[:quarter])
    check_loaded(load_dataset("cifar10", cache_dir=cache, progress=False), exp)
    assert server.requests == [("/cifar-10-binary.tar.gz", f"bytes={quarter}-")]
    assert server.sent == len(data) - quarter
    assert (cache / "cifar-10-binary.tar.gz").read_bytes() == data


def test_server_without_range_support_restarts(served, server) -> None:
    exp, data, cache = served
    cache.mkdir()
    (cache / "cifar-10-binary.tar.gz.part").write_bytes(b"stale bytes from some other file")
    server.mode = "norange"
    check_loaded(load_dataset("cifar10", cache_dir=cache, progress=False), exp)
    assert server.sent == len(data) and (cache / "cifar-10-binary.tar.gz").read_bytes() == data


def test_complete_part_is_finished_without_downloading(served, server) -> None:
    exp, data, cache = served  # a crash after the last byte, before the rename: the server answers 416
    cache.mkdir()
    (cache / "cifar-10-binary.tar.gz.part").write_bytes(data)
    check_loaded(load_dataset("cifar10", cache_dir=cache, progress=False), exp)
    assert server.sent == 0 and not (cache / "cifar-10-binary.tar.gz.part").exists()


def test_archive_in_cache_with_wrong_md5_is_not_trusted(tmp_path: Path) -> None:
    exp = write_cifar(tmp_path / "src", "cifar10", "binary")
    cache = tmp_path / "cache"
    cache.mkdir()
    archive = write_archive(exp.folder, cache / "cifar-10-binary.tar.gz")  # e.g. a rebuilt local copy
    with pytest.raises(DataError, match=r"(?s)does not have the published MD5.*--data-dir PATH"):
        load_dataset("cifar10", cache_dir=cache, download=False)
    assert archive.exists()  # the user's file is left alone
    check_loaded(load_dataset("cifar10", data_dir=archive, cache_dir=cache), exp)  # no MD5 check this way


def test_progress_output(served, capsys, tmp_path: Path) -> None:
    _, _, cache = served
    load_dataset("cifar10", cache_dir=cache, progress=True)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "downloading cifar-10-binary.tar.gz" in err  # not a TTY: one line
    load_dataset("cifar10", cache_dir=tmp_path / "quiet", progress=False)
    assert capsys.readouterr().err == ""

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    bar = ProgressBar(2_000_000, "x.tar.gz", stream=tty, unit="B", scale=True, leave=True)
    bar.update(500_000)
    bar.update(2_000_000)
    bar.close()
    out = tty.getvalue()
    assert "\r" in out and "x.tar.gz" in out and "2.00M/2.00M" in out and "B/s" in out and "100%" in out and out.endswith("\n")


def test_progress_bar_only_on_a_terminal_unless_forced() -> None:
    from npvit.cli.progress import format_seconds

    plain = io.StringIO()
    bar = ProgressBar(4, "epoch 1/1", stream=plain)
    bar.update(2, loss=0.5)
    bar.close()
    assert plain.getvalue() == "" and not bar.live
    forced = io.StringIO()
    bar = ProgressBar(4, "epoch 1/1", stream=forced, enabled=True, leave=True)  # kept: its last state shows
    bar.update(4, loss=0.123456, acc="50.00%")
    bar.close()
    assert "epoch 1/1" in forced.getvalue() and "loss 0.1235  acc 50.00%" in forced.getvalue()
    assert (format_seconds(12), format_seconds(3725)) == ("0:12", "1:02:05")


# ------------------------------------------------------------------------------------------ synthetic

def test_synthetic_dataset_is_deterministic_and_learnable() -> None:
    ds = load_dataset("synthetic", synthetic_size=(300, 100), image_size=12, num_classes=5, seed=3)
    assert ds.x_train.shape == (300, 12, 12, 3) and ds.x_test.shape == (100, 12, 12, 3)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    assert ds.class_names == [f"class_{i}" for i in range(5)] and ds.num_classes == 5
    assert np.bincount(ds.y_train).tolist() == [60] * 5
    again = load_dataset("synthetic", synthetic_size=(300, 100), image_size=12, num_classes=5, seed=3)
    np.testing.assert_array_equal(ds.x_train, again.x_train)
    np.testing.assert_array_equal(ds.y_test, again.y_test)
    other = load_dataset("synthetic", synthetic_size=(300, 100), image_size=12, num_classes=5, seed=4)
    assert not np.array_equal(ds.x_train, other.x_train)
    # learnable: even nearest class mean (fit on train) classifies the test set almost perfectly
    x_tr, x_te = ds.x_train.reshape(300, -1).astype(float), ds.x_test.reshape(100, -1).astype(float)
    means = np.stack([x_tr[ds.y_train == c].mean(0) for c in range(5)])
    pred = ((x_te[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    assert (pred == ds.y_test).mean() > 0.95


def test_synthetic_defaults_and_validation() -> None:
    ds = load_dataset("synthetic")
    assert (len(ds.x_train), len(ds.x_test), ds.image_size, ds.num_classes) == (1000, 200, 32, 10)
    assert "synthetic" in repr(ds) and "train=1000" in repr(ds)
    with pytest.raises(ValueError, match="num_classes"):
        load_dataset("synthetic", num_classes=0)
    with pytest.raises(ValueError, match="x_train must be uint8"):
        Dataset("x", np.zeros((2, 4, 4, 3)), np.zeros(2, np.int64), np.zeros((1, 4, 4, 3), np.uint8),
                np.zeros(1, np.int64), ["a"])
