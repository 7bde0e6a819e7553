"""Weight sources and verification, on real files in a throwaway package (no model needed)."""

import hashlib
import sys

import pytest

from ladder.errors import ChecksumMismatch, WeightsUnavailable
from ladder.workers.weights import PackageSource, WeightStore, package_chunks


@pytest.fixture
def chunk_packages(tmp_path, monkeypatch):
    """Two installed-looking packages each holding one chunk under data/, like the tier packages."""
    payload = [b"GGUF" + b"\x01" * 100, b"\x02" * 50]
    for i, data in enumerate(payload, start=1):
        pkg = tmp_path / f"ladder_testchunk_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part0{i}.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield hashlib.sha256(b"".join(payload)).hexdigest()
    for i in (1, 2):
        sys.modules.pop(f"ladder_testchunk_part{i}", None)


def source(sha: str) -> PackageSource:
    return PackageSource(("ladder_testchunk_part1", "ladder_testchunk_part2"), sha, "t.gguf")


def test_chunks_are_found_in_package_order(chunk_packages):
    chunks = package_chunks(source(chunk_packages))
    assert [c.name for c in chunks] == ["part01.bin", "part02.bin"]


def test_verify_accepts_matching_checksum_and_remembers_it(chunk_packages, tmp_path):
    store = WeightStore(tmp_path / "cache")
    store.verify(source(chunk_packages))
    assert (tmp_path / "cache" / "verified" / f"{chunk_packages}.json").is_file()


def test_verify_refuses_a_mismatch(chunk_packages, tmp_path):
    with pytest.raises(ChecksumMismatch, match="registry expects"):
        WeightStore(tmp_path / "cache").verify(source("0" * 64))


def test_a_changed_chunk_is_detected_after_a_successful_verify(chunk_packages, tmp_path):
    store = WeightStore(tmp_path / "cache")
    src = source(chunk_packages)
    chunks = store.verify(src)
    chunks[1].write_bytes(b"\x03" * 51)  # tampered after verification (size changes the fingerprint)
    with pytest.raises(ChecksumMismatch):
        store.verify(src)


def test_missing_magic_is_refused(tmp_path, monkeypatch):
    pkg = tmp_path / "ladder_testbad"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "m.gguf").write_bytes(b"NOPE" * 10)
    monkeypatch.syspath_prepend(str(tmp_path))
    sha = hashlib.sha256(b"NOPE" * 10).hexdigest()
    with pytest.raises(ChecksumMismatch, match="GGUF magic"):
        WeightStore(tmp_path / "c").verify(PackageSource(("ladder_testbad",), sha, "m.gguf"))
    sys.modules.pop("ladder_testbad", None)


def test_missing_package_says_how_to_install():
    with pytest.raises(WeightsUnavailable, match="not installed"):
        package_chunks(PackageSource(("ladder_no_such_pkg_xyz",), "0" * 64, "x.gguf"))
