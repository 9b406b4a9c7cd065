"""Token shards in the official format: round trip and every corrupt-shard case."""

from __future__ import annotations

import numpy as np
import pytest

from mlra.data.shards import (
    HEADER_BYTES,
    MAGIC,
    ShardWriter,
    read_header,
    read_shard,
    write_shard,
)
from mlra.errors import DataError


def _raw(path, header_values, tokens):
    header = np.zeros(256, dtype="<i4")
    header[: len(header_values)] = header_values
    path.write_bytes(header.tobytes() + np.asarray(tokens, dtype="<u2").tobytes())
    return path


def test_round_trip_matches_official_layout(tmp_path):
    tokens = np.array([0, 1, 50256, 65535, 7], dtype=np.int64)
    path = write_shard(tmp_path / "a.bin", tokens)
    raw = path.read_bytes()
    assert len(raw) == HEADER_BYTES + 2 * tokens.size
    header = np.frombuffer(raw[:HEADER_BYTES], dtype="<i4")
    assert header[:3].tolist() == [MAGIC, 1, 5] and not header[3:].any()
    assert np.frombuffer(raw[HEADER_BYTES:], dtype="<u2").tolist() == tokens.tolist()
    back = read_shard(path)
    assert back.dtype == np.uint16 and back.tolist() == tokens.tolist()
    assert read_header(path) == 5


def test_reads_a_shard_written_by_hand_like_the_official_script(tmp_path):
    path = _raw(tmp_path / "fineweb_val_000000.bin", [MAGIC, 1, 3], [50256, 464, 318])
    assert read_shard(path, vocab_size=50304).tolist() == [50256, 464, 318]


def test_empty_shard(tmp_path):
    path = write_shard(tmp_path / "e.bin", [])
    assert read_shard(path).size == 0


@pytest.mark.parametrize(
    "header, tokens, message",
    [
        ([123, 1, 2], [1, 2], "magic number 123"),
        ([MAGIC, 2, 2], [1, 2], "format version 2"),
        ([MAGIC, 1, 5], [1, 2], "truncated"),
        ([MAGIC, 1, 1], [1, 2], "trailing bytes"),
        ([MAGIC, 1, -1], [], "negative token count"),
    ],
)
def test_corrupt_headers_raise_naming_the_file(tmp_path, header, tokens, message):
    path = _raw(tmp_path / "bad.bin", header, tokens)
    with pytest.raises(DataError, match=message) as info:
        read_shard(path)
    assert str(path) in str(info.value)


def test_file_shorter_than_header(tmp_path):
    path = tmp_path / "short.bin"
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match="shorter than the 1024-byte header") as info:
        read_shard(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_shard(tmp_path / "nope.bin")


def test_token_out_of_vocabulary_names_file_and_position(tmp_path):
    path = write_shard(tmp_path / "v.bin", [1, 2, 300, 4])
    assert read_shard(path, vocab_size=301).size == 4
    with pytest.raises(DataError, match=r"token id 300 at position 2 .*vocabulary \(size 257\)") \
            as info:
        read_shard(path, vocab_size=257)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("tokens", [[1, 65536], [-1, 2], [[1, 2]], [1.5, 2.0]])
def test_write_rejects_tokens_that_do_not_fit(tmp_path, tokens):
    with pytest.raises(DataError):
        write_shard(tmp_path / "x.bin", np.asarray(tokens))
    assert not (tmp_path / "x.bin").exists()


def test_shard_writer_splits_at_shard_size(tmp_path):
    writer = ShardWriter(tmp_path, "train", shard_tokens=4)
    writer.add(np.arange(3))
    writer.add(np.arange(3, 10))
    paths = writer.close()
    assert [p.name for p in paths] == ["train_000000.bin", "train_000001.bin", "train_000002.bin"]
    joined = np.concatenate([read_shard(p) for p in paths])
    assert joined.tolist() == list(range(10))
    assert writer.total == 10


@pytest.mark.parametrize("tokens", [[1, 70000], [-1, 2], np.array([3, 65536], np.int64),
                                    [[1, 2]], [1.5, 2.0], [True, False]])
def test_shard_writer_rejects_ids_that_do_not_fit(tmp_path, tokens):
    writer = ShardWriter(tmp_path, "train", shard_tokens=4)
    writer.add([7, 8])
    with pytest.raises(DataError, match=r"\[0, 65535\]|one-dimensional"):
        writer.add(tokens)
    assert writer.total == 2  # nothing of the rejected array was added
    writer.add([])
    writer.add(np.array([65535, 0], dtype=np.int64))
    (path,) = writer.close()
    assert read_shard(path).tolist() == [7, 8, 65535, 0]
