"""Tests for rnnsweep.data: splits, local/generated corpora, and enwik8 fetching over real HTTP."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import re
import socket
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from rnnsweep.data import (
    SPLITS,
    DataError,
    fetch_enwik8,
    generate_corpus,
    load_split,
    prepare_corpus,
    split_bounds,
)

SMALL = 20_000  # stands in for 10**8 in the download tests
BY_HAND = "and put it (or the unzipped enwik8) in"


def _entropy_bits(data: bytes) -> float:
    counts = np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256)
    p = counts[counts > 0] / len(data)
    return float(-(p * np.log2(p)).sum())


# --------------------------------------------------------------------------- split_bounds


def test_split_bounds_enwik8_is_exact() -> None:
    assert split_bounds(10**8) == [
        (0, 90_000_000),
        (90_000_000, 95_000_000),
        (95_000_000, 100_000_000),
    ]


@pytest.mark.parametrize("n", [0, 1, 19, 20, 101, 12_345, 999_999_937])
def test_split_bounds_contiguous_and_proportional(n: int) -> None:
    bounds = split_bounds(n)
    assert len(bounds) == len(SPLITS)
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(prev[1] == nxt[0] for prev, nxt in zip(bounds, bounds[1:]))
    sizes = [stop - start for start, stop in bounds]
    assert all(size >= 0 for size in sizes)
    for size, share in zip(sizes, (0.90, 0.05, 0.05)):
        assert abs(size - share * n) <= 1


# --------------------------------------------------------------------------- local corpus


def test_prepare_local_file_round_trips(tmp_path: Path) -> None:
    original = np.random.default_rng(1).integers(0, 256, size=10_007, dtype=np.uint8).tobytes()
    source = tmp_path / "corpus.raw"
    source.write_bytes(original)
    out = tmp_path / "data"

    meta = prepare_corpus(str(source), out, cache_dir=tmp_path / "cache")

    parts = [(out / f"{split}.bin").read_bytes() for split in SPLITS]
    assert b"".join(parts) == original
    assert [len(p) for p in parts] == [stop - start for start, stop in split_bounds(len(original))]
    assert meta == json.loads((out / "corpus.json").read_text())
    assert meta["total_bytes"] == len(original)
    assert meta["splits"] == dict(zip(SPLITS, map(len, parts)))
    assert meta["sha256"] == hashlib.sha256(original).hexdigest()
    assert sorted(p.name for p in out.iterdir()) == ["corpus.json", "test.bin", "train.bin", "valid.bin"]
    for split, (start, stop) in zip(SPLITS, split_bounds(len(original))):
        arr = load_split(out, split)
        assert arr.dtype == np.uint8 and len(arr) == stop - start
        assert arr.tobytes() == original[start:stop]
        assert not arr.flags.writeable


def test_prepare_expands_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "c.raw").write_bytes(b"x" * 100)
    meta = prepare_corpus("~/c.raw", tmp_path / "d", cache_dir=tmp_path / "cache")
    assert meta["source"] == str(tmp_path / "c.raw")


def test_load_split_rejects_unknown_split_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        load_split(tmp_path, "training")
    with pytest.raises(DataError, match="valid.bin"):
        load_split(tmp_path, "valid")


# --------------------------------------------------------------------------- generated corpus


def test_generated_corpus_deterministic_and_structured() -> None:
    a = generate_corpus(50_000, seed=0)
    assert len(a) == 50_000
    assert a == generate_corpus(50_000, seed=0)
    assert a != generate_corpus(50_000, seed=1)
    assert 2.0 < _entropy_bits(a) < 6.0
    assert b". " in a and b"\n" in a


@pytest.mark.parametrize("n", [0, 1, 37, 4_096])
def test_generated_corpus_exact_length(n: int) -> None:
    assert len(generate_corpus(n, seed=5)) == n


def test_prepare_generated(tmp_path: Path) -> None:
    meta = prepare_corpus("generated", tmp_path / "d", cache_dir=tmp_path / "c",
                          generated_bytes=30_000, seed=3)
    assert meta["source"] == "generated" and meta["total_bytes"] == 30_000
    joined = b"".join(load_split(tmp_path / "d", s).tobytes() for s in SPLITS)
    assert joined == generate_corpus(30_000, seed=3)


# --------------------------------------------------------------------------- user errors


def test_missing_file_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataError, match=re.escape(str(missing))):
        prepare_corpus(str(missing), tmp_path / "d", cache_dir=tmp_path / "c")


def test_empty_file_names_path(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.touch()
    with pytest.raises(DataError, match=re.escape(str(empty))):
        prepare_corpus(str(empty), tmp_path / "d", cache_dir=tmp_path / "c")


def test_too_short_file_names_path_and_sizes(tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_bytes(b"a" * 1_000)  # valid split = 50 bytes < window of 100
    with pytest.raises(DataError) as info:
        prepare_corpus(str(short), tmp_path / "d", cache_dir=tmp_path / "c", min_bytes=100)
    message = str(info.value)
    assert str(short) in message and "too short" in message
    assert "1,000 bytes" in message and "window of 100" in message
    assert not (tmp_path / "d" / "corpus.json").exists()


def test_min_bytes_bound_is_tight(tmp_path: Path) -> None:
    """The size the error asks for really is enough, and one byte less is not."""
    short = tmp_path / "short.txt"
    short.write_bytes(b"a" * 10)
    with pytest.raises(DataError) as info:
        prepare_corpus(str(short), tmp_path / "d", cache_dir=tmp_path / "c", min_bytes=64)
    needed = int(str(info.value).split("needs at least ")[1].split()[0].replace(",", ""))
    assert min(b - a for a, b in split_bounds(needed)) >= 64
    assert min(b - a for a, b in split_bounds(needed - 1)) < 64
    short.write_bytes(b"a" * needed)
    prepare_corpus(str(short), tmp_path / "d", cache_dir=tmp_path / "c", min_bytes=64)


# --------------------------------------------------------------------------- download


@dataclass
class Server:
    """A real HTTP server on localhost serving `root`, counting the requests it gets."""

    root: Path
    url: str = ""
    requests: list[str] = field(default_factory=list)

    def zip_url(self) -> str:
        return f"{self.url}/enwik8.zip"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "www"
    root.mkdir()
    state = Server(root)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
    )
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A URL on a bound port nobody listens on, so connecting is refused (no race with reuse)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/enwik8.zip"
    finally:
        sock.close()


def _serve_zip(server: Server, payload: bytes) -> None:
    with zipfile.ZipFile(server.root / "enwik8.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("enwik8", payload)


@pytest.fixture
def payload() -> bytes:
    return generate_corpus(SMALL, seed=7)


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name != "enwik8.lock")


def test_fetch_downloads_once(tmp_path: Path, server: Server, payload: bytes) -> None:
    _serve_zip(server, payload)
    cache = tmp_path / "cache"
    digest = hashlib.sha256(payload).hexdigest()

    path = fetch_enwik8(cache, server.zip_url(), sha256=digest, timeout=5, expected_bytes=SMALL)

    assert path == cache / "enwik8" and path.read_bytes() == payload
    assert server.requests == ["/enwik8.zip"]
    assert _leftovers(cache) == ["enwik8", "enwik8.zip"]
    again = fetch_enwik8(cache, server.zip_url(), sha256=digest, timeout=5, expected_bytes=SMALL)
    assert again == path and server.requests == ["/enwik8.zip"]


def test_fetch_uses_cached_zip_offline(tmp_path: Path, refused_url: str, payload: bytes) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    with zipfile.ZipFile(cache / "enwik8.zip", "w") as zf:
        zf.writestr("enwik8", payload)
    path = fetch_enwik8(cache, refused_url, timeout=5, expected_bytes=SMALL)
    assert path.read_bytes() == payload


@pytest.mark.parametrize("problem", ["sha256", "size"])
def test_fetch_sets_bad_file_aside(
    tmp_path: Path, server: Server, payload: bytes, problem: str
) -> None:
    if problem == "size":
        payload = payload[:-1]
    _serve_zip(server, payload)
    cache = tmp_path / "cache"
    digest = "0" * 64 if problem == "sha256" else None

    with pytest.raises(DataError, match="enwik8.bad-") as info:
        fetch_enwik8(cache, server.zip_url(), sha256=digest, timeout=5, expected_bytes=SMALL)

    assert not (cache / "enwik8").exists()
    assert not (cache / "enwik8.zip").exists()  # a rerun must not reuse the bad zip
    bad = [p for p in cache.iterdir() if p.name.startswith("enwik8.bad-")]
    assert len(bad) == 1 and bad[0].read_bytes() == payload
    assert str(bad[0]) in str(info.value)
    assert not any(p.name.endswith(".part") for p in cache.iterdir())


def test_fetch_rejects_cached_file_of_wrong_size(tmp_path: Path, refused_url: str) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "enwik8").write_bytes(b"truncated")
    with pytest.raises(DataError, match="9 bytes"):
        fetch_enwik8(cache, refused_url, timeout=5, expected_bytes=SMALL)
    assert not (cache / "enwik8").exists()
    assert [p.read_bytes() for p in cache.glob("enwik8.bad-*")] == [b"truncated"]


def test_fetch_rejects_non_zip(tmp_path: Path, server: Server) -> None:
    (server.root / "enwik8.zip").write_bytes(b"<html>captive portal</html>")
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="not a zip"):
        fetch_enwik8(cache, server.zip_url(), timeout=5, expected_bytes=SMALL)
    assert not (cache / "enwik8").exists() and not (cache / "enwik8.zip").exists()
    assert len(list(cache.glob("enwik8.zip.bad-*"))) == 1


def _assert_network_error(cache: Path, url: str) -> None:
    with pytest.raises(DataError) as info:
        fetch_enwik8(cache, url, timeout=5, expected_bytes=SMALL)
    message = str(info.value)
    assert url in message and str(cache) in message
    assert f"download enwik8.zip from {url} {BY_HAND} {cache}" in message
    assert _leftovers(cache) == []


def test_fetch_http_404(tmp_path: Path, server: Server) -> None:
    _assert_network_error(tmp_path / "cache", server.zip_url())
    assert server.requests == ["/enwik8.zip"]


def test_fetch_connection_refused(tmp_path: Path, refused_url: str) -> None:
    _assert_network_error(tmp_path / "cache", refused_url)


def test_prepare_enwik8_from_local_server(tmp_path: Path, server: Server, payload: bytes) -> None:
    _serve_zip(server, payload)
    out = tmp_path / "data"
    meta = prepare_corpus("enwik8", out, cache_dir=tmp_path / "cache", url=server.zip_url(),
                          expected_bytes=SMALL, min_bytes=100)
    assert meta["source"] == "enwik8"
    assert meta["splits"] == {"train": 18_000, "valid": 1_000, "test": 1_000}
    assert b"".join((out / f"{s}.bin").read_bytes() for s in SPLITS) == payload
    assert meta["sha256"] == hashlib.sha256(payload).hexdigest()


@pytest.mark.parametrize("stage", ["download", "unzip"])
def test_a_full_disk_leaves_no_part_file(tmp_path: Path, server: Server, payload: bytes, monkeypatch, stage: str) -> None:
    """ENOSPC half way through a copy: the error goes up as it is (the CLI makes it one line), no `.part` stays."""
    import errno

    import rnnsweep.data as data_module

    _serve_zip(server, payload)
    cache = tmp_path / "cache"
    copy = data_module._copy_stream

    def full_disk(src, dst, what):
        if stage in what:
            dst.write(src.read(100))
            raise OSError(errno.ENOSPC, "No space left on device")
        return copy(src, dst, what)

    monkeypatch.setattr(data_module, "_copy_stream", full_disk)
    with pytest.raises(OSError) as info:
        fetch_enwik8(cache, server.zip_url(), timeout=5, expected_bytes=SMALL)
    assert info.value.errno == errno.ENOSPC
    assert not [name for name in _leftovers(cache) if name.endswith(".part")]
    assert _leftovers(cache) == ([] if stage == "download" else ["enwik8.zip"])


def test_corpus_json_records_each_split_hash(tmp_path: Path) -> None:
    source = tmp_path / "corpus.txt"
    source.write_bytes(generate_corpus(SMALL, seed=3))
    meta = prepare_corpus(str(source), tmp_path / "data", cache_dir=tmp_path)
    for split in SPLITS:
        assert meta["split_sha256"][split] == hashlib.sha256((tmp_path / "data" / f"{split}.bin").read_bytes()).hexdigest()


@pytest.mark.parametrize("damage", ["byte flipped", "cut", "corpus.json missing", "corpus.json damaged"])
def test_a_split_that_is_not_the_one_corpus_json_records_is_refused(tmp_path: Path, damage: str) -> None:
    """What runs read is checked against the corpus step's record before any run trains or is scored."""
    from rnnsweep.tokens import load_text

    data = tmp_path / "data"
    prepare_corpus("generated", data, cache_dir=tmp_path, generated_bytes=SMALL, seed=3)
    load_text(data)  # as written: accepted
    valid = data / "valid.bin"
    if damage == "byte flipped":
        raw = bytearray(valid.read_bytes())
        raw[17] ^= 1
        valid.write_bytes(bytes(raw))
    elif damage == "cut":
        valid.write_bytes(valid.read_bytes()[:-1])
    elif damage == "corpus.json missing":
        (data / "corpus.json").unlink()
    else:
        (data / "corpus.json").write_text('{"split_sha256": ')
    expected = {"byte flipped": "valid.bin is not the split", "cut": "valid.bin is not the split",
                "corpus.json missing": "corpus step did not finish", "corpus.json damaged": "corpus.json is damaged"}[damage]
    with pytest.raises(DataError, match=expected):
        load_text(data)
