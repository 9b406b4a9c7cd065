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

import gzip
import io
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mlra.atomic import atomic_write_text
from mlra.data.corpus import builtin_documents
from mlra.data.shards import ShardWriter
from mlra.data.tokenizers import BPETokenizer, ByteTokenizer, Tokenizer, get_tokenizer
from mlra.errors import DataError

TEXT_SUFFIXES = {".txt", ".text", ".md", ".rst", ".tex", ".html", ".htm", ".py", ".csv"}
JSONL_SUFFIXES = {".jsonl", ".ndjson"}
BUILTIN = "builtin"


@dataclass
class Source:
    """One input file (or the built-in corpus)."""

    path: Path | None
    kind: str  # "text", "jsonl" or "builtin"
    size: int


def _suffixes(path: Path) -> tuple[str, bool]:
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return Path(path.stem).suffix.lower(), True
    return suffix, False


def find_sources(inputs: Sequence[str]) -> list[Source]:
    """Expand the inputs into files, with a clear error for anything missing or unreadable."""
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


def _open_text(path: Path) -> io.TextIOBase:
    _, gz = _suffixes(path)
    if gz:
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


_BLOCK_CHARS = 1 << 22  # text files are read in ~4M-character pieces cut at paragraph breaks


def iter_documents(
    source: Source, text_field: str = "text"
) -> Iterator[tuple[str, str | None, int, bool]]:
    """``(text, forced split or None, bytes consumed, starts a document)`` for the documents of
    ``source``; a large text file comes as several pieces of one document."""
    if source.kind == "builtin":
        for split in ("train", "validation"):
            for _, text in builtin_documents(split):
                yield text, ("val" if split == "validation" else "train"), len(text), True
        return
    assert source.path is not None
    if source.kind == "text":
        with _open_text(source.path) as f:
            first, carry = True, ""
            while True:
                block = f.read(_BLOCK_CHARS)
                text = carry + block
                if not block:
                    if text or first:
                        yield text, None, len(text.encode()), first
                    return
                cut = text.rfind("\n\n")
                if cut < 0:
                    carry = text
                    continue
                piece, carry = text[:cut + 2], text[cut + 2:]
                yield piece, None, len(piece.encode()), first
                first = False
    with _open_text(source.path) as f:
        for n, line in enumerate(f, 1):
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
            yield text, None, len(line.encode()), True


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
    force_split: str | None = None,
) -> Iterator[tuple[str, str, bool, int]]:
    """``(chunk, split, starts_document, bytes)`` over every input."""
    splitter = _Splitter(fraction)
    for source in sources:
        for text, forced, nbytes, starts in iter_documents(source, text_field):
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
) -> PrepareResult:
    """Tokenize ``inputs`` into ``out``; see the module docstring. ``tokenizer``: ``byte``,
    ``gpt2``, ``bpe`` (trained here on the training split, ``vocab_size`` ids), a path to a
    ``tokenizer.json``, or a :class:`Tokenizer`."""
    t0 = time.time()
    out = Path(out)
    if not 0 <= val_fraction < 1:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    existing = sorted(out.glob("*.bin")) if out.is_dir() else []
    if existing and not overwrite:
        raise DataError(f"{out} already holds shards ({existing[0].name}, ...); choose another "
                        "--out or pass --overwrite")
    sources = find_sources(inputs)
    val_sources = find_sources(val_inputs) if val_inputs else []
    total = sum(s.size for s in sources) + sum(s.size for s in val_sources)
    if val_sources:
        fraction = 0.0
    else:
        # Small inputs get a larger validation share (at most 10%) so validation holds ~64 KB.
        fraction = max(val_fraction, min(0.1, 65536 / max(total, 1))) if val_fraction else 0.0
    k = max(2, round(1 / fraction)) if fraction else 1
    chunk_chars = int(min(1 << 20, max(2048, total // (4 * k))))

    def all_chunks() -> Iterator[tuple[str, str, bool, int]]:
        yield from _chunks(sources, fraction, chunk_chars, text_field)
        yield from _chunks(val_sources, 0.0, chunk_chars, text_field, force_split="val")

    tok = _make_tokenizer(tokenizer, gpt2_file, vocab_size, all_chunks, progress)
    if tok.vocab_size > 65536:
        raise DataError(f"tokenizer {tok.name} has {tok.vocab_size} ids; shards hold uint16 ids")
    out.mkdir(parents=True, exist_ok=True)
    for old in existing:
        old.unlink()
    writers = {"train": ShardWriter(out, "train", shard_tokens),
               "val": ShardWriter(out, "val", shard_tokens)}
    eot = np.array([tok.eot_id], dtype=np.uint16)
    documents = 0
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
    tok.save(out)
    result = PrepareResult(
        out=out, train_tokens=writers["train"].total, val_tokens=writers["val"].total,
        train_shards=train_paths, val_shards=val_paths, tokenizer=tok.name,
        documents=documents, seconds=time.time() - t0,
    )
    meta: dict[str, Any] = {
        "inputs": [str(i) for i in inputs], "val_inputs": [str(i) for i in val_inputs or []],
        "tokenizer": tok.name, "vocab_size": tok.vocab_size, "eot_id": tok.eot_id,
        "train_tokens": result.train_tokens, "val_tokens": result.val_tokens,
        "documents": documents, "val_fraction": fraction, "chunk_chars": chunk_chars,
        "text_field": text_field,
    }
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=1) + "\n")
    return result


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
