"""Data files under faults: corrupt CIFAR archives (every damaged byte of the gzip stream, tar headers, short
files, members landing outside), hostile and odd pickles, and data settings read back from a run. Each test
builds the damaged file for real and checks the safe outcome: one clear message, no traceback, and every file
that existed before left unchanged."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import write_archive, write_cifar
from fault_checks import digests, one_error_line
from processes import run_python

from npvit.data import DataError, load_dataset
from npvit.settings import load_run_dataset
from npvit.data import archive as archive_mod
from npvit.data.safe_pickle import safe_load

pytestmark = pytest.mark.usefixtures("private_cache")  # no test touches the real dataset cache


def cifar10_archive(root: Path, per_file: int = 20) -> tuple[Path, object]:
    exp = write_cifar(root / "src", "cifar10", "binary", per_file=per_file)
    return write_archive(exp.folder, root / "cifar-10-binary.tar.gz"), exp


def flip_bit(data: bytes, position: int) -> bytes:
    out = bytearray(data)
    out[position] ^= 0x10
    return bytes(out)


def test_a_bit_flip_inside_the_archive_stops_the_training_program(tmp_path: Path) -> None:
    archive, _ = cifar10_archive(tmp_path)
    cache = tmp_path / "cache"
    good, _ = cifar10_archive(tmp_path / "other", per_file=2)
    load_dataset("cifar10", data_dir=good, cache_dir=cache)  # an earlier extraction in the same cache
    before = digests(cache)
    archive.write_bytes(flip_bit(archive.read_bytes(), archive.stat().st_size // 2))
    damaged = archive.read_bytes()
    proc = run_python("-m", "npvit.train", "--dataset", "cifar10", "--data-dir", str(archive), "--cache-dir",
                      str(cache), "--preset", "tiny", "--epochs", "1", "--quiet", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    one_error_line(proc.stderr, f"the archive {archive} is corrupt", "CRC-32", "replace it")
    assert "cache" not in proc.stderr.split("corrupt")[1]  # the archive is blamed, not the cache
    assert digests(cache) == before and archive.read_bytes() == damaged  # nothing added, nothing changed


@pytest.mark.parametrize("where", ["start", "middle", "crc", "length"])
def test_every_damaged_byte_of_the_gzip_stream_is_caught(tmp_path: Path, where: str) -> None:
    archive, _ = cifar10_archive(tmp_path)
    data = archive.read_bytes()
    position = {"start": 40, "middle": len(data) // 2, "crc": len(data) - 6, "length": len(data) - 2}[where]
    archive.write_bytes(flip_bit(data, position))
    with pytest.raises(DataError, match=f"archive .* is corrupt: .*({'length' if where == 'length' else 'gzip'})"):
        load_dataset("cifar10", data_dir=archive, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / "extracted").iterdir()) == []


def test_a_damaged_tar_header_part_way_is_caught(tmp_path: Path) -> None:
    archive, _ = cifar10_archive(tmp_path)
    tar = bytearray(gzip.decompress(archive.read_bytes()))
    with tarfile.open(fileobj=io.BytesIO(bytes(tar))) as t:
        fourth = t.getmembers()[4]
    tar[fourth.offset + 100] ^= 1  # the mode field: the header checksum no longer matches
    archive.write_bytes(gzip.compress(bytes(tar)))  # a gzip stream that is itself intact
    with tarfile.open(archive) as t:  # what tarfile alone makes of it: an archive that just ends early
        assert len(t.getmembers()) == 4
    with pytest.raises(DataError, match=f"corrupt: the tar data is damaged at byte {fourth.offset}"):
        load_dataset("cifar10", data_dir=archive, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / "extracted").iterdir()) == []


def test_short_archives_are_refused(tmp_path: Path) -> None:
    archive, _ = cifar10_archive(tmp_path)
    tar = gzip.decompress(archive.read_bytes())
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        cut = t.getmembers()[5].offset  # a whole number of members, without the end-of-archive blocks
    for data, message in [(archive.read_bytes()[:-100], "ends in the middle of the gzip data"),
                          (gzip.compress(tar[:cut]), "without its end-of-archive marker"),
                          (gzip.compress(tar[:cut + 700]), "corrupt"),
                          (tar[:cut], "without its end-of-archive marker")]:  # a plain .tar
        archive.write_bytes(data)
        os.utime(archive, ns=(len(data), len(data)))
        with pytest.raises(DataError, match=message):
            load_dataset("cifar10", data_dir=archive, cache_dir=tmp_path / "cache")
        assert list((tmp_path / "cache" / "extracted").iterdir()) == []


def test_a_good_archive_in_several_gzip_members_with_padding_loads(tmp_path: Path) -> None:
    archive, exp = cifar10_archive(tmp_path)
    tar = gzip.decompress(archive.read_bytes())
    archive.write_bytes(gzip.compress(tar[:5000]) + gzip.compress(tar[5000:]) + b"\0" * 4096)
    ds = load_dataset("cifar10", data_dir=archive, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(ds.x_test, exp.x_test)


def test_a_rejected_extraction_replaces_nothing_and_removes_the_stale_copy(tmp_path: Path) -> None:
    archive, exp = cifar10_archive(tmp_path)
    cache = tmp_path / "cache"
    load_dataset("cifar10", data_dir=archive, cache_dir=cache)
    (old,) = (cache / "extracted").iterdir()
    archive.write_bytes(flip_bit(archive.read_bytes(), archive.stat().st_size // 2))  # changed, now corrupt
    os.utime(archive, ns=(7, 7))
    with pytest.raises(DataError, match="is corrupt"):
        load_dataset("cifar10", data_dir=archive, cache_dir=cache)
    assert list((cache / "extracted").iterdir()) == []  # neither the bad extraction nor the outdated copy
    assert not old.exists()


def test_extraction_stops_at_what_the_dataset_can_hold(tmp_path: Path) -> None:
    # A header that declares a 500 MB member, and hardly any data after it: refused at the header.
    info = tarfile.TarInfo("cifar-10-batches-bin/data_batch_1.bin")
    info.size = 500 * 10**6
    bomb = tmp_path / "cifar-10-binary.tar.gz"
    bomb.write_bytes(gzip.compress(info.tobuf() + b"\0" * 4096))
    started = time.perf_counter()
    with pytest.raises(DataError, match="expands to more than 400 MB, more than the dataset can be"):
        load_dataset("cifar10", data_dir=bomb, cache_dir=tmp_path / "cache")
    assert time.perf_counter() - started < 5 and list((tmp_path / "cache" / "extracted").iterdir()) == []

    # Too many members.
    many = tmp_path / "many.tar.gz"
    with tarfile.open(many, "w:gz") as tar:
        for i in range(101):
            member = tarfile.TarInfo(f"cifar-10-batches-bin/f{i}")
            member.size = 1
            tar.addfile(member, io.BytesIO(b"x"))
    with pytest.raises(DataError, match="more than 100 files and folders"):
        load_dataset("cifar10", data_dir=many, cache_dir=tmp_path / "cache")

    # Data that is no member at all (zero padding after the end, 20 MB of it): stopped by the stream limit,
    # a few MB in, not after inflating all of it.
    archive, _ = cifar10_archive(tmp_path / "padded", per_file=2)
    padded = gzip.compress(gzip.decompress(archive.read_bytes()) + bytes(20 << 20), compresslevel=1)
    archive.write_bytes(padded)
    dest = tmp_path / "cache" / "extracted" / "padded"
    with pytest.raises(DataError, match="expands to more than 2 MB"):
        archive_mod.extract_atomically(archive, dest, max_bytes=1 << 20)
    assert not dest.exists() and list(dest.parent.iterdir()) == []


@pytest.mark.parametrize("filters", [True, False], ids=["tarfile-data-filter", "realpath-check"])
def test_members_landing_outside_are_refused_with_and_without_tarfile_filters(tmp_path: Path, monkeypatch,
                                                                              filters: bool) -> None:
    if filters and not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python has no tarfile extraction filters")
    monkeypatch.setattr(archive_mod, "_HAS_FILTERS", filters)
    used = []
    if filters:
        real = tarfile.data_filter
        monkeypatch.setattr(tarfile, "data_filter", lambda m, p: used.append(m.name) or real(m, p))
    archive, exp = cifar10_archive(tmp_path)
    ds = load_dataset("cifar10", data_dir=archive, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(ds.x_train, exp.x_train)
    assert (len(used) == 8) if filters else used == []  # the folder and its 7 files passed through the filter
    # A member placed inside a folder that is a symlink pointing out: only a realpath-style check sees it
    # (the names are clean); the symlink is refused first anyway, so build the escape by hand.
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    (root / "cifar-10-batches-bin").parent.mkdir(parents=True)
    os.symlink(outside, root / "cifar-10-batches-bin")
    member = tarfile.TarInfo("cifar-10-batches-bin/escaped")
    with pytest.raises(DataError, match="refused to extract"):
        archive_mod._check_inside(member, root / "cifar-10-batches-bin" / "escaped", root, archive)


def _reduce_ndarray_pickle(shape: tuple[int, int]) -> bytes:
    """{'data': numpy.ndarray(shape, uint8), 'labels': []}: a 165-byte file that asks for 300 MB."""
    return (b"\x80\x02}q\x00(X\x04\x00\x00\x00dataq\x01cnumpy\nndarray\nq\x02" +
            b"J" + struct.pack("<i", shape[0]) + b"M" + struct.pack("<H", shape[1]) + b"\x86" +
            b"cnumpy\ndtype\nX\x02\x00\x00\x00u1\x89\x88\x87R\x86R" +
            b"X\x06\x00\x00\x00labels]u.")


def test_a_pickle_cannot_allocate_what_it_does_not_hold(tmp_path: Path) -> None:
    exp = write_cifar(tmp_path, "cifar10", "python")
    payload = _reduce_ndarray_pickle((100000, 3072))
    assert len(payload) < 200
    (exp.folder / "data_batch_1").write_bytes(payload)
    before = digests(tmp_path)
    proc = run_python("-m", "npvit.train", "--dataset", "cifar10", "--data-dir", str(exp.folder), "--preset",
                      "tiny", "--epochs", "1", "--quiet", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    one_error_line(proc.stderr, "data_batch_1", "not a valid CIFAR pickle")
    assert digests(tmp_path) == before


def _array_state_pickle(shape: tuple[int, ...], data: bytes, dtype: str = "u1", state: tuple | None = None) -> bytes:
    """An array pickled the way NumPy does (``_reconstruct`` then ``BUILD``), with the declared shape and the
    raw bytes chosen freely."""
    head = (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b\x87R(K\x01" +
            pickle.dumps(shape, protocol=2)[2:-1] +
            b"cnumpy\ndtype\n" + pickle.dumps(dtype, protocol=2)[2:-1] + b"K\x00K\x01\x87R")
    dstate = state or (3, "|", None, None, None, -1, -1, 0)
    return head + pickle.dumps(dstate, protocol=2)[2:-1] + b"b\x89" + pickle.dumps(data, protocol=3)[2:-1] + b"tb."


@pytest.mark.parametrize("case", ["short-data", "long-data", "huge-itemsize", "negative-itemsize", "object",
                                  "subarray", "bad-shape"])
def test_array_recipes_are_checked_before_anything_is_built(tmp_path: Path, case: str) -> None:
    path = tmp_path / "batch"
    payload = {
        "short-data": _array_state_pickle((100000, 3072), b"\x01" * 10),
        "long-data": _array_state_pickle((2,), b"\x01" * 3),
        "huge-itemsize": _array_state_pickle((1,), b"ab", "S1", (3, "|", None, None, None, 10**12, 1, 0)),
        "negative-itemsize": _array_state_pickle((1,), b"", "S1", (3, ">", None, None, None, -1, 1, 0)),
        "object": _array_state_pickle((1,), b"\0" * 8, "O"),
        "subarray": _array_state_pickle((1,), b"\0", "u1", (3, "|", (np.dtype("u1"), (10**9,)), None, None,
                                                                  -1, -1, 0)),
        "bad-shape": _array_state_pickle((-1, 3), b""),
    }[case]
    if case != "subarray":  # that one cannot even be pickled without the dtype global it embeds
        path.write_bytes(payload)
        with pytest.raises(DataError) as info:
            safe_load(path)
        message = str(info.value)
        assert message.startswith(f"cannot read {path}: not a valid CIFAR pickle") or "refused" in message
        assert message.isascii() and "\\x01" not in message and len(message) < 600  # no memory contents
    # the well-formed twin of each loads
    path.write_bytes(_array_state_pickle((2, 3), bytes(range(6))))
    np.testing.assert_array_equal(safe_load(path), np.arange(6, dtype=np.uint8).reshape(2, 3))


def test_uninitialised_labels_never_reach_an_error_message(tmp_path: Path) -> None:
    """Labels as ``numpy.ndarray((5,), int64)`` once showed whatever the heap held as 'found a..b'."""
    exp = write_cifar(tmp_path, "cifar10", "python")
    payload = (b"\x80\x02}(X\x04\x00\x00\x00data" + _array_state_pickle((3, 3072), bytes(3 * 3072))[2:-1] +
               b"X\x06\x00\x00\x00labelscnumpy\nndarray\nK\x05\x85cnumpy\ndtype\nX\x02\x00\x00\x00i8\x89\x88\x87R"
               b"\x86Ru.")
    (exp.folder / "data_batch_2").write_bytes(payload)
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", data_dir=exp.folder)
    assert "data_batch_2" in str(info.value) and "found" not in str(info.value)


@pytest.mark.parametrize("protocol", [2, 5])
@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_cifar_pickles_from_python3_load_with_protocols_2_and_5(tmp_path: Path, dataset: str, protocol: int) -> None:
    exp = write_cifar(tmp_path, dataset, "python", per_file=4)
    for name in exp.layout.files:
        batch = pickle.loads((exp.folder / name).read_bytes(), encoding="bytes")
        if b"data" in batch:
            batch[b"data"] = np.ascontiguousarray(batch[b"data"])
        if protocol == 5 and b"labels" in batch:
            batch[b"labels"] = np.asarray(batch[b"labels"], dtype=np.int64)  # an array, as re-pickled copies have
        data = pickle.dumps(batch, protocol=protocol)
        assert (b"_codecs" in data) == (protocol == 2) and (b"_frombuffer" in data) == (protocol == 5 and
                                                                                      b"data" in batch)
        (exp.folder / name).write_bytes(data)
    ds = load_dataset(dataset, data_dir=exp.folder)
    np.testing.assert_array_equal(ds.x_train, exp.x_train)
    np.testing.assert_array_equal(ds.y_test, exp.labels("test"))
    assert ds.class_names == exp.class_names()




def test_load_run_dataset_checks_each_data_setting_by_the_settings_table() -> None:
    ds = load_run_dataset({"dataset": "synthetic", "synthetic_size": [4, 2], "synthetic_image_size": 8,
                           "synthetic_classes": 2, "seed": 1}, progress=False)
    assert ds.x_train.shape == (4, 8, 8, 3)
    with pytest.raises(DataError, match=r"the run setting seed \(--seed\): expected an integer >= 0"):
        load_run_dataset({"dataset": "synthetic", "seed": -5})
