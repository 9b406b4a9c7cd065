"""Token shards in the official format (llm.c / the official MLRA data scripts).

A shard is a 1024-byte header of 256 little-endian int32 -- ``[20240520, 1, n_tokens, 0, ...]``
-- followed by ``n_tokens`` little-endian uint16 token ids. Shards written by the official
``get_train_data.py`` (FineWeb-Edu, GPT-2 BPE) are read unchanged.

Every validation failure raises :class:`mlra.errors.DataError` naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlra.atomic import atomic_write
from mlra.errors import DataError

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MAX_TOKEN_ID = np.iinfo(np.uint16).max
_CHECK_CHUNK = 1 << 24  # tokens per chunk when scanning a shard for out-of-range ids


def _header(n_tokens: int) -> np.ndarray:
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = MAGIC, VERSION, n_tokens
    return header


def _checked_ids(tokens: np.ndarray | list[int], where: str) -> np.ndarray:
    """``tokens`` as a 1-D little-endian uint16 array, or :class:`DataError` if any id is not
    an integer in [0, 65535] (no silent wrap-around)."""
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise DataError(f"{where}: tokens must be one-dimensional, got shape {arr.shape}")
    if not arr.size:
        return np.zeros(0, dtype="<u2")
    if arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() > MAX_TOKEN_ID:
        raise DataError(
            f"{where}: token ids must be integers in [0, {MAX_TOKEN_ID}] to fit the uint16 shard "
            "format"
        )
    return arr.astype("<u2", copy=False)


def write_shard(path: str | Path, tokens: np.ndarray | list[int]) -> Path:
    """Write ``tokens`` (ids in [0, 65535]) as one shard, atomically (tmp + fsync + rename)."""
    path = Path(path)
    data = _checked_ids(tokens, str(path))
    if data.size >= 2**31:
        raise DataError(f"{path}: {data.size} tokens do not fit one shard (int32 token count)")

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(_header(int(data.size)).tobytes())
            f.write(data.tobytes())

    atomic_write(path, write)
    return path


def read_header(path: str | Path) -> int:
    """Validate a shard's header and size; return its token count."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"token shard {path} does not exist")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise DataError(
            f"token shard {path} is truncated: {size} bytes, shorter than the "
            f"{HEADER_BYTES}-byte header"
        )
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if int(header[0]) != MAGIC:
        raise DataError(
            f"{path} is not a token shard: magic number {int(header[0])}, expected {MAGIC}"
        )
    if int(header[1]) != VERSION:
        raise DataError(
            f"token shard {path} has format version {int(header[1])}; only version {VERSION} "
            "(uint16 tokens) is supported"
        )
    n_tokens = int(header[2])
    if n_tokens < 0:
        raise DataError(f"token shard {path} has a negative token count {n_tokens}")
    expected = HEADER_BYTES + 2 * n_tokens
    if size < expected:
        raise DataError(
            f"token shard {path} is truncated: header says {n_tokens} tokens "
            f"({expected} bytes) but the file has {size} bytes"
        )
    if size > expected:
        raise DataError(
            f"token shard {path} has {size - expected} unexpected trailing bytes after its "
            f"{n_tokens} tokens"
        )
    return n_tokens


def read_shard(path: str | Path, vocab_size: int | None = None) -> np.ndarray:
    """The tokens of a shard as a read-only uint16 memmap, header validated.

    With ``vocab_size``, the whole shard is scanned and an id >= ``vocab_size`` is an error
    naming the file and the offending position.
    """
    path = Path(path)
    n_tokens = read_header(path)
    if n_tokens == 0:
        return np.zeros(0, dtype=np.uint16)
    tokens = np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(n_tokens,))
    if vocab_size is not None:
        check_token_range(tokens, vocab_size, str(path))
    return tokens


def check_token_range(tokens: np.ndarray, vocab_size: int, source: str, offset: int = 0) -> None:
    """Raise :class:`DataError` if any id in ``tokens`` is >= ``vocab_size``."""
    for start in range(0, tokens.size, _CHECK_CHUNK):
        chunk = np.asarray(tokens[start:start + _CHECK_CHUNK])
        if chunk.size and int(chunk.max()) >= vocab_size:
            bad = int(np.argmax(chunk >= vocab_size)) + start
            raise DataError(
                f"{source}: token id {int(tokens[bad])} at position {offset + bad} is outside "
                f"the vocabulary (size {vocab_size}); the shard was made with a different "
                "tokenizer"
            )


class ShardWriter:
    """Append token arrays and write numbered shards of ``shard_tokens`` tokens
    (``{prefix}_000000.bin``, ...). Documents may span shard boundaries, as in the official
    scripts. Call :meth:`close` to flush the last partial shard."""

    def __init__(self, directory: str | Path, prefix: str, shard_tokens: int = 100_000_000):
        if shard_tokens <= 0:
            raise DataError(f"shard size must be positive, got {shard_tokens}")
        self.directory = Path(directory)
        self.prefix = prefix
        self.shard_tokens = shard_tokens
        self.paths: list[Path] = []
        self.total = 0
        self._buffer: list[np.ndarray] = []
        self._buffered = 0

    def add(self, tokens: np.ndarray | list[int]) -> None:
        """Append a one-dimensional sequence of token ids in [0, 65535]; an id that does not
        fit the uint16 shard format raises :class:`DataError` (nothing is added)."""
        arr = _checked_ids(tokens, f"{self.directory / self.prefix}_*.bin")
        self.total += arr.size
        while arr.size:
            take = min(arr.size, self.shard_tokens - self._buffered)
            self._buffer.append(arr[:take])
            self._buffered += take
            arr = arr[take:]
            if self._buffered == self.shard_tokens:
                self._flush()

    def _flush(self) -> None:
        if not self._buffered:
            return
        path = self.directory / f"{self.prefix}_{len(self.paths):06d}.bin"
        write_shard(path, np.concatenate(self._buffer))
        self.paths.append(path)
        self._buffer, self._buffered = [], 0

    def close(self) -> list[Path]:
        """Write the remaining tokens; return every shard written."""
        self._flush()
        return self.paths
