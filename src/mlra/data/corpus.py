"""The built-in corpus: real English text present on any Python install, no download.

It is made of the interpreter's own documentation -- the ``pydoc_data`` topics (the language
reference sections behind ``help()``) -- and the docstrings of the standard library's modules,
classes and functions, read from the source files with :mod:`ast` (nothing is imported). On
CPython 3.11 that is about 2.1 MB of text in ~750 documents (one per topic, one per module).

The corpus is deterministic for a given Python installation (documents in sorted order). A
document goes to the validation split when the CRC-32 of its name is divisible by 25 (~4% of
the text), so the split does not depend on the text itself. Different Python versions give
slightly different corpora; the cache is keyed by the interpreter version.

Prepared token shards for each tokenizer are cached under :func:`mlra.data.cache.cache_dir`
(``$MLRA_CACHE`` or ``~/.cache/mlra``), written atomically.
"""

from __future__ import annotations

import ast
import gc
import hashlib
import json
import sys
import sysconfig
import zlib
from pathlib import Path

import numpy as np

from mlra.atomic import atomic_write_text
from mlra.data.cache import cache_dir
from mlra.data.shards import read_header, write_shard
from mlra.data.tokenizers import Tokenizer
from mlra.errors import DataError

CORPUS_VERSION = 1
SPLITS = ("train", "validation")
MIN_BYTES = 1_000_000
_VAL_MODULUS = 25
_SKIP_DIRS = {
    "test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "turtledemo",
    "__pycache__", "ensurepip", "__phello__", "pydoc_data",
}


def _stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _module_document(path: Path, module: str) -> str | None:
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError, OSError):
        return None
    parts: list[str] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}.{child.name}"
                doc = ast.get_docstring(child)
                if doc and len(doc) >= 20:
                    parts.append(f"{name}\n\n{doc}")
                visit(child, name)

    doc = ast.get_docstring(tree)
    if doc and len(doc) >= 20:
        parts.append(f"Module {module}\n\n{doc}")
    visit(tree, module)
    return "\n\n".join(parts) if parts else None


def _collect_documents() -> list[tuple[str, str]]:
    docs: list[tuple[str, str]] = []
    try:
        from pydoc_data import topics

        for key in sorted(topics.topics):
            text = topics.topics[key].strip()
            if text:
                docs.append((f"topic:{key}", text))
    except ImportError:  # some distributions strip pydoc_data; docstrings alone suffice
        pass
    root = _stdlib_dir()
    files = sorted(
        (p for p in root.rglob("*.py") if not _SKIP_DIRS & set(p.relative_to(root).parts)),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    # The cyclic garbage collector triples the cost of building ~10 MB of syntax trees; the
    # trees are acyclic and freed by reference counting, so pause it while parsing.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for path in files:
            rel = path.relative_to(root).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            module = ".".join(parts)
            text = _module_document(path, module)
            if text:
                docs.append((f"module:{module}", text))
    finally:
        if was_enabled:
            gc.enable()
    return docs


def _corpus_key() -> str:
    version = ".".join(map(str, sys.version_info[:3]))
    blob = f"{CORPUS_VERSION}|{sys.implementation.name}|{version}|{_stdlib_dir()}"
    return f"builtin-v{CORPUS_VERSION}-py{version}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


def corpus_dir() -> Path:
    """Cache directory of the built-in corpus for this interpreter."""
    return cache_dir() / _corpus_key()


def _is_validation(name: str) -> bool:
    return zlib.crc32(name.encode()) % _VAL_MODULUS == 0


def builtin_documents(split: str | None = None) -> list[tuple[str, str]]:
    """``(name, text)`` documents of the corpus (``split``: ``train``, ``validation`` or None
    for all), in a fixed order. Collected once (~10 s) and cached as JSON."""
    if split not in (None, *SPLITS):
        raise DataError(f"unknown split {split!r}; choose one of {SPLITS}")
    path = corpus_dir() / "documents.json"
    docs: list[tuple[str, str]] | None = None
    if path.is_file():
        try:
            docs = [tuple(d) for d in json.loads(path.read_text())]  # type: ignore[misc]
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
            docs = None
    if docs is None:
        docs = _collect_documents()
        size = sum(len(t.encode()) for _, t in docs)
        if size < MIN_BYTES:
            raise DataError(
                f"the built-in corpus needs the standard library's source files and found only "
                f"{size} bytes of text under {_stdlib_dir()}; this Python installation ships "
                "without them -- pass --data with your own shards or text instead"
            )
        atomic_write_text(path, json.dumps(docs))
    if split is None:
        return docs
    want_val = split == "validation"
    return [d for d in docs if _is_validation(d[0]) == want_val]


def builtin_text(split: str = "train") -> str:
    """The text of one split, documents separated by blank lines."""
    return "\n\n".join(text for _, text in builtin_documents(split))


def _split_file(split: str) -> str:
    return "train.bin" if split == "train" else "val.bin"


def builtin_shard(tokenizer: Tokenizer, split: str = "train") -> Path:
    """The token shard of ``split`` for ``tokenizer``: every document preceded by the
    end-of-text id, as the official data scripts do. Prepared once and cached."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {SPLITS}")
    directory = corpus_dir() / f"{tokenizer.kind}-{tokenizer.fingerprint()}"
    path = directory / _split_file(split)
    if path.is_file():
        try:
            read_header(path)
            return path
        except DataError:
            pass  # a damaged cache entry is rebuilt
    texts = [text for _, text in builtin_documents(split)]
    eot = np.array([tokenizer.eot_id], dtype=np.uint16)
    pieces = []
    for ids in tokenizer.encode_batch(texts):
        pieces += [eot, np.asarray(ids, dtype=np.uint16)]
    write_shard(path, np.concatenate(pieces))
    if not (directory / "tokenizer.json").is_file():
        tokenizer.save(directory)
    return path


def builtin_train_shard(tokenizer: Tokenizer) -> Path:
    """Path of the built-in corpus's training shard for ``tokenizer``."""
    return builtin_shard(tokenizer, "train")


def builtin_validation_shard(tokenizer: Tokenizer) -> Path:
    """Path of the built-in corpus's validation shard for ``tokenizer``."""
    return builtin_shard(tokenizer, "validation")
