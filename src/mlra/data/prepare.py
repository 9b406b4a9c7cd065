"""``mlra data prepare``: local text / JSONL / directories -> train and validation shards.

Inputs are documents: a text file (``.txt``, ``.md``, ``.rst``, ...) is one document, a JSONL
file one document per line (field ``text`` by default), a directory every such file inside it
(sorted, recursive); ``.gz`` files are read transparently; ``builtin`` is the built-in corpus
(keeping its own split). Each document is cut at paragraph breaks into chunks of a few KB, and
every k-th chunk (k = 1 / validation fraction) goes to the validation split, so the split is
spread over the whole input, deterministic, and works for a single text file. Every document
starts with the end-of-text token (as in the official scripts); so does every validation chunk.

Output: ``train_000000.bin ...``, ``val_000000.bin ...`` (official shard format),
``tokenizer.json`` and ``meta.json``. Tokenization runs in batches through the tokenizer's
parallel batch encoder (tiktoken and ``tokenizers`` use all cores).
"""

from __future__ import annotations

import codecs
import gzip
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mlra.atomic import atomic_write_text, fs_error, make_dirs
from mlra.data.corpus import builtin_documents
from mlra.data.shards import ShardWriter
from mlra.data.tokenizers import BPETokenizer, ByteTokenizer, Tokenizer, get_tokenizer
from mlra.errors import DataError

TEXT_SUFFIXES = {".txt", ".text", ".md", ".rst", ".tex", ".html", ".htm", ".py", ".csv"}
JSONL_SUFFIXES = {".jsonl", ".ndjson"}
BUILTIN = "builtin"


ERRORS = ("strict", "replace")
_SNIFF_BYTES = 8192


@dataclass
class Source:
    """One input file (or the built-in corpus)."""

    path: Path | None
    kind: str  # "text", "jsonl" or "builtin"
    size: int


@dataclass
class TextDecoding:
    """How input bytes become text: ``encoding`` (default UTF-8) and ``errors``: ``strict``
    refuses invalid bytes naming the byte offset, ``replace`` puts U+FFFD in their place and
    counts them in :attr:`replaced`."""

    encoding: str = "utf-8"
    errors: str = "strict"
    replaced: int = 0

    def __post_init__(self) -> None:
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise DataError(f"--encoding {self.encoding!r} is not an encoding Python knows "
                            "(e.g. utf-8, latin-1, cp1252, utf-16)") from None
        if self.errors not in ERRORS:
            raise DataError(f"--errors must be one of {', '.join(ERRORS)}, got {self.errors!r}")

    @property
    def wide(self) -> bool:
        """UTF-16/32 text holds NUL bytes, so it cannot be told from binary by them."""
        return codecs.lookup(self.encoding).name.startswith(("utf-16", "utf-32"))

    def decoder(self) -> codecs.IncrementalDecoder:
        """An incremental decoder; with ``errors="replace"`` it counts what it replaces."""
        if self.errors == "strict":
            return codecs.getincrementaldecoder(self.encoding)(errors="strict")
        return codecs.getincrementaldecoder(self.encoding)(errors=_COUNTING_REPLACE)

    def refuse(self, path: Path, at: int, exc: UnicodeDecodeError, gz: bool) -> DataError:
        where = " of the decompressed text" if gz else ""
        return DataError(
            f"{path}: invalid {self.encoding} at byte offset {at}{where} ({exc.reason}); pass "
            "--encoding ENC if the file is in another encoding (e.g. latin-1), or --errors "
            "replace to replace invalid bytes with U+FFFD (they are counted)"
        )


_COUNTING_REPLACE = "mlra-counting-replace"
_replaced_bytes = [0]  # bytes replaced by the handler below since the last read


def _count_and_replace(exc: UnicodeError) -> tuple[str, int]:
    assert isinstance(exc, UnicodeDecodeError)
    _replaced_bytes[0] += exc.end - exc.start
    return "\ufffd", exc.end


codecs.register_error(_COUNTING_REPLACE, _count_and_replace)


def _take_replaced() -> int:
    count, _replaced_bytes[0] = _replaced_bytes[0], 0
    return count


def _sniff_binary(path: Path, decoding: TextDecoding) -> None:
    """Refuse a file that is evidently not text (a NUL byte near its start)."""
    _, gz = _suffixes(path)
    if decoding.wide:
        return
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            head = f.read(_SNIFF_BYTES)
    except (OSError, EOFError) as exc:
        error = fs_error(exc, path, "read")
        raise (error or DataError(f"{path} cannot be read: {exc}")) from exc
    at = head.find(b"\0")
    if at >= 0:
        kind = "an executable (ELF)" if head.startswith(b"\x7fELF") else "binary"
        raise DataError(
            f"{path} is {kind}, not text (a NUL byte at offset {at}); `mlra data prepare` takes "
            "text and JSONL files (for UTF-16 text pass --encoding utf-16)"
        )


def _suffixes(path: Path) -> tuple[str, bool]:
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return Path(path.stem).suffix.lower(), True
    return suffix, False


def find_sources(inputs: Sequence[str], decoding: TextDecoding | None = None) -> list[Source]:
    """Expand the inputs into files, with a clear error for anything missing, unreadable or
    binary."""
    decoding = decoding or TextDecoding()
    sources: list[Source] = []
    for spec in inputs:
        if spec == BUILTIN:
            size = sum(len(t) for _, t in builtin_documents())
            sources.append(Source(None, "builtin", size))
            continue
        p = Path(spec).expanduser()
        if not p.exists():
            raise DataError(f"input {p} does not exist")
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        found = 0
        for f in files:
            suffix, _ = _suffixes(f)
            if suffix in JSONL_SUFFIXES:
                kind = "jsonl"
            elif suffix in TEXT_SUFFIXES or (not p.is_dir() and suffix != ".bin"):
                kind = "text"
            else:
                continue
            _sniff_binary(f, decoding)
            sources.append(Source(f, kind, f.stat().st_size))
            found += 1
        if not found:
            raise DataError(
                f"input {p} holds no text files ({', '.join(sorted(TEXT_SUFFIXES))}) or JSONL "
                f"files ({', '.join(sorted(JSONL_SUFFIXES))})"
            )
    if not sources:
        raise DataError("no inputs given: pass text/JSONL files, directories or 'builtin'")
    return sources


_BLOCK_BYTES = 1 << 22  # text files are read in 4 MB pieces, cut at paragraph breaks


def _text_blocks(path: Path, decoding: TextDecoding) -> Iterator[tuple[str, int]]:
    """``(text, bytes)`` blocks of a (gzipped) text file, decoded as ``decoding`` says; the
    last block has 0 bytes."""
    _, gz = _suffixes(path)
    decoder = decoding.decoder()
    offset = 0
    with (gzip.open(path, "rb") if gz else open(path, "rb")) as raw:
        while True:
            block = raw.read(_BLOCK_BYTES)
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                raise decoding.refuse(path, offset - pending + exc.start, exc, gz) from None
            decoding.replaced += _take_replaced()
            offset += len(block)
            yield text, len(block)
            if not block:
                return


def _jsonl_lines(path: Path, decoding: TextDecoding) -> Iterator[tuple[int, str, int]]:
    """``(line number, text, bytes)`` of a (gzipped) JSONL file."""
    _, gz = _suffixes(path)
    offset = 0
    with (gzip.open(path, "rb") if gz else open(path, "rb")) as raw:
        for n, line in enumerate(raw, 1):
            try:
                text = decoding.decoder().decode(line, final=True)
            except UnicodeDecodeError as exc:
                raise decoding.refuse(path, offset + exc.start, exc, gz) from None
            decoding.replaced += _take_replaced()
            offset += len(line)
            yield n, text, len(line)


def iter_documents(
    source: Source, text_field: str = "text", decoding: TextDecoding | None = None
) -> Iterator[tuple[str, str | None, int, bool]]:
    """``(text, forced split or None, bytes consumed, starts a document)`` for the documents of
    ``source``; a large text file comes as several pieces of one document."""
    decoding = decoding or TextDecoding()
    if source.kind == "builtin":
        for split in ("train", "validation"):
            for _, text in builtin_documents(split):
                yield text, ("val" if split == "validation" else "train"), len(text), True
        return
    assert source.path is not None
    if source.kind == "text":
        first, carry, carry_bytes = True, "", 0
        for block, nbytes in _text_blocks(source.path, decoding):
            text = carry + block
            carry_bytes += nbytes
            if not nbytes:
                if text or first:
                    yield text, None, carry_bytes, first
                return
            cut = text.rfind("\n\n")
            if cut < 0:
                carry = text
                continue
            piece, carry = text[:cut + 2], text[cut + 2:]
            yield piece, None, carry_bytes, first
            carry_bytes = 0
            first = False
        return
    for n, line, nbytes in _jsonl_lines(source.path, decoding):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{source.path} line {n} is not valid JSON: {exc}") from exc
        if not isinstance(record, dict) or text_field not in record:
            raise DataError(
                f"{source.path} line {n} has no field {text_field!r} (choose the field with "
                "--text-field)"
            )
        text = record[text_field]
        if not isinstance(text, str):
            raise DataError(f"{source.path} line {n}: field {text_field!r} is not a string")
        yield text, None, nbytes, True


def split_chunks(text: str, chunk_chars: int) -> list[str]:
    """Cut ``text`` at paragraph breaks into chunks of about ``chunk_chars`` characters
    (a paragraph longer than that stays whole). Concatenating the chunks gives ``text``."""
    if len(text) <= chunk_chars:
        return [text]
    chunks, start = [], 0
    while start < len(text):
        end = start + chunk_chars
        if end >= len(text):
            chunks.append(text[start:])
            break
        cut = text.find("\n\n", end)
        if cut < 0:
            chunks.append(text[start:])
            break
        cut += 2
        chunks.append(text[start:cut])
        start = cut
    return chunks


@dataclass
class PrepareResult:
    out: Path
    train_tokens: int
    val_tokens: int
    train_shards: list[Path] = field(default_factory=list)
    val_shards: list[Path] = field(default_factory=list)
    tokenizer: str = ""
    documents: int = 0
    seconds: float = 0.0
    replaced_bytes: int = 0
    val_note: str = ""
    chunks: int = 0
    unsplit_chunks: int = 0

    def summary(self) -> str:
        return (f"wrote {self.train_tokens:,} training tokens in {len(self.train_shards)} shard(s) "
                f"and {self.val_tokens:,} validation tokens in {len(self.val_shards)} shard(s) "
                f"({self.documents:,} documents, tokenizer {self.tokenizer}) to {self.out} in "
                f"{self.seconds:.1f} s")


class _Splitter:
    """Deterministic chunk -> split assignment: every k-th chunk goes to validation."""

    def __init__(self, fraction: float) -> None:
        self.k = max(2, round(1 / fraction)) if fraction > 0 else 0
        self.count = 0

    def __call__(self) -> str:
        self.count += 1
        if self.k and self.count % self.k == self.k // 2:
            return "val"
        return "train"


def _chunks(
    sources: Sequence[Source], fraction: float, chunk_chars: int, text_field: str,
    decoding: TextDecoding, force_split: str | None = None,
) -> Iterator[tuple[str, str, bool, int]]:
    """``(chunk, split, starts_document, bytes)`` over every input."""
    splitter = _Splitter(fraction)
    for source in sources:
        for text, forced, nbytes, starts in iter_documents(source, text_field, decoding):
            pieces = split_chunks(text, chunk_chars) if text else []
            for i, piece in enumerate(pieces):
                split = force_split or forced or splitter()
                yield piece, split, starts and i == 0, (nbytes if i == len(pieces) - 1 else 0)
            if not pieces:
                yield "", "skip", False, nbytes


def prepare(
    inputs: Sequence[str],
    out: str | Path,
    tokenizer: str | Tokenizer = "byte",
    *,
    vocab_size: int = 8192,
    val_fraction: float = 0.01,
    val_inputs: Sequence[str] | None = None,
    text_field: str = "text",
    shard_tokens: int = 100_000_000,
    gpt2_file: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    encoding: str = "utf-8",
    errors: str = "strict",
) -> PrepareResult:
    """Tokenize ``inputs`` into ``out``; see the module docstring. ``tokenizer``: ``byte``,
    ``gpt2``, ``bpe`` (trained here on the training split, ``vocab_size`` ids), a path to a
    ``tokenizer.json``, or a :class:`Tokenizer`. Input is decoded with ``encoding``; invalid
    bytes are refused (``errors="strict"``) or replaced and counted (``"replace"``).

    The new shards are written into a staging directory inside ``out`` and moved into place
    only when all of them are complete: a failure (disk full, bad input) leaves the shards
    already in ``out`` as they were."""
    t0 = time.time()
    decoding = TextDecoding(encoding, errors)
    out = Path(out)
    if not 0 <= val_fraction < 1:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    existing = sorted(out.glob("*.bin")) if out.is_dir() else []
    if existing and not overwrite:
        raise DataError(f"{out} already holds shards ({existing[0].name}, ...); choose another "
                        "--out or pass --overwrite")
    sources = find_sources(inputs, decoding)
    val_sources = find_sources(val_inputs, decoding) if val_inputs else []
    total = sum(s.size for s in sources) + sum(s.size for s in val_sources)
    if val_sources:
        fraction = 0.0
    else:
        # Small inputs get a larger validation share (at most 10%) so validation holds ~64 KB.
        fraction = max(val_fraction, min(0.1, 65536 / max(total, 1))) if val_fraction else 0.0
    k = max(2, round(1 / fraction)) if fraction else 1
    chunk_chars = int(min(1 << 20, max(2048, total // (4 * k))))

    def all_chunks() -> Iterator[tuple[str, str, bool, int]]:
        yield from _chunks(sources, fraction, chunk_chars, text_field, decoding)
        yield from _chunks(val_sources, 0.0, chunk_chars, text_field, decoding,
                           force_split="val")

    tok = _make_tokenizer(tokenizer, gpt2_file, vocab_size, all_chunks, progress)
    if tok.vocab_size > 65536:
        raise DataError(f"tokenizer {tok.name} has {tok.vocab_size} ids; shards hold uint16 ids")
    stage = make_dirs(out) / f".prepare-{uuid.uuid4().hex[:8]}"
    try:
        result = _write_shards(
            all_chunks, tok, stage, shard_tokens, total, progress, decoding, out, chunk_chars)
        _publish(stage, out, existing)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    result.train_shards = [out / p.name for p in result.train_shards]
    result.val_shards = [out / p.name for p in result.val_shards]
    if not result.val_shards and not val_sources:
        result.val_note = _no_validation_cause(fraction, k, chunk_chars, result)
    result.seconds = time.time() - t0
    meta: dict[str, Any] = {
        "inputs": [str(i) for i in inputs], "val_inputs": [str(i) for i in val_inputs or []],
        "tokenizer": tok.name, "vocab_size": tok.vocab_size, "eot_id": tok.eot_id,
        "train_tokens": result.train_tokens, "val_tokens": result.val_tokens,
        "documents": result.documents, "val_fraction": fraction, "chunk_chars": chunk_chars,
        "text_field": text_field, "encoding": encoding, "errors": errors,
        "replaced_bytes": result.replaced_bytes,
    }
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=1) + "\n")
    return result


def _no_validation_cause(fraction: float, k: int, chunk_chars: int, r: PrepareResult) -> str:
    """Why no validation shard was written, in one sentence."""
    if not fraction:
        return "no validation split: --val-fraction is 0; pass --val-input, or train with " \
               "--eval-interval 0"
    if r.unsplit_chunks:
        return (f"no validation split: the text has no paragraph breaks (blank lines) to cut "
                f"it at, so it forms {r.chunks} chunk(s) and validation takes every {k}-th; add "
                "blank lines between paragraphs, or pass --val-input")
    return (f"no validation split: the input is too small ({r.chunks} chunk(s) of about "
            f"{chunk_chars:,} characters; validation takes every {k}-th); pass --val-input, or "
            "train with --eval-interval 0")


def _publish(stage: Path, out: Path, existing: list[Path]) -> None:
    """Replace the shards of ``out`` by the complete new ones in ``stage``."""
    for old in existing:
        old.unlink()
    for new in sorted(stage.iterdir()):
        os.replace(new, out / new.name)


def _write_shards(
    all_chunks: Any, tok: Tokenizer, stage: Path, shard_tokens: int, total: int,
    progress: bool, decoding: TextDecoding, out: Path, chunk_chars: int,
) -> PrepareResult:
    """Tokenize every chunk into shards (and tokenizer.json) in ``stage``."""
    stage.mkdir()
    writers = {"train": ShardWriter(stage, "train", shard_tokens),
               "val": ShardWriter(stage, "val", shard_tokens)}
    eot = np.array([tok.eot_id], dtype=np.uint16)
    documents = chunks = unsplit = 0
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="tokenizing", disable=not progress)
    batch: list[tuple[str, str, bool]] = []
    batch_chars = 0

    def flush() -> None:
        nonlocal batch, batch_chars
        if isinstance(tok, ByteTokenizer):
            encoded = [tok.encode_array(text) for text, _, _ in batch]
        else:
            encoded = tok.encode_batch([text for text, _, _ in batch])
        for (_, split, first), ids in zip(batch, encoded, strict=True):
            if first or split == "val":
                writers[split].add(eot)
            writers[split].add(np.asarray(ids, dtype=np.uint16))
        batch, batch_chars = [], 0

    for text, split, first, nbytes in all_chunks():
        if split != "skip":
            documents += int(first)
            chunks += 1
            unsplit += len(text) > 2 * chunk_chars  # no paragraph break to cut it at
            batch.append((text, split, first))
            batch_chars += len(text)
        bar.update(nbytes)
        if batch_chars >= (1 << 22) or len(batch) >= 1024:
            flush()
    flush()
    bar.close()
    train_paths, val_paths = writers["train"].close(), writers["val"].close()
    if not train_paths:
        raise DataError("the inputs produced no training tokens (are the files empty?)")
    tok.save(stage)
    return PrepareResult(
        out=out, train_tokens=writers["train"].total, val_tokens=writers["val"].total,
        train_shards=train_paths, val_shards=val_paths, tokenizer=tok.name,
        documents=documents, replaced_bytes=decoding.replaced, chunks=chunks,
        unsplit_chunks=unsplit,
    )


def _make_tokenizer(
    spec: str | Tokenizer, gpt2_file: str | None, vocab_size: int, chunks: Any, progress: bool,
) -> Tokenizer:
    if isinstance(spec, Tokenizer):
        return spec
    if spec == "bpe":
        texts = (text for text, split, _, _ in chunks() if split == "train")
        if progress:
            print(f"training a {vocab_size}-token BPE on the training split ...", flush=True)
        return BPETokenizer.train(texts, vocab_size=vocab_size)
    tok = get_tokenizer(spec, gpt2_file)
    if hasattr(tok, "check"):
        tok.check()  # fail now, before reading the inputs, if the GPT-2 file is missing
    return tok
