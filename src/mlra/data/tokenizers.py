"""Tokenizers: byte-level (needs nothing), GPT-2 BPE through ``tiktoken`` from a local file,
and a byte-level BPE trained on the user's corpus with the ``tokenizers`` library.

Every tokenizer writes itself to ``tokenizer.json`` (our small wrapper format, ``"format":
"mlra-tokenizer"``) with :meth:`Tokenizer.save`; :func:`load_tokenizer` reads it back. A trained
BPE stores its whole vocabulary there; the GPT-2 tokenizer stores only a reference and finds its
vocabulary file again at load time (see :func:`gpt2_tokenizer`). Nothing is downloaded.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlra.atomic import atomic_write_text
from mlra.errors import DataError

TOKENIZER_FILE = "tokenizer.json"
FORMAT_NAME = "mlra-tokenizer"
FORMAT_VERSION = 1
EOT_TEXT = "<|endoftext|>"
GPT2_ENV = "MLRA_GPT2_BPE"
GPT2_VOCAB = 50257
GPT2_EOT = 50256

GPT2_HELP = (
    "The GPT-2 tokenizer needs its vocabulary as a local file (nothing is downloaded at run "
    "time). Get one of: (a) r50k_base.tiktoken (GPT-2's vocabulary in tiktoken format) from "
    "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken, or (b) the "
    "original vocab.bpe + encoder.json from "
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/ (or merges.txt + "
    "vocab.json of the Hugging Face 'gpt2' repository) in one directory; then pass "
    f"--gpt2-file PATH or set {GPT2_ENV}=PATH (or put the file in ~/.cache/mlra/gpt2/). It also "
    "needs `pip install tiktoken` (or `pip install 'mlra[data]'`)."
)


def pad_vocab(n: int, multiple: int = 64) -> int:
    """The model vocabulary for a tokenizer of ``n`` ids, rounded up (GPT-2: 50257 -> 50304)."""
    return -(-n // multiple) * multiple


class Tokenizer:
    """Base class: text <-> token ids with an end-of-text id that separates documents."""

    kind: str = "abstract"
    name: str = "abstract"
    vocab_size: int
    eot_id: int

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (special tokens in the text are treated as ordinary text)."""
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; the end-of-text id decodes to ``<|endoftext|>``."""
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode several texts (parallel where the backend supports it)."""
        return [self.encode(t) for t in texts]

    def to_dict(self) -> dict[str, Any]:
        """The JSON description written by :meth:`save` (without the format header)."""
        return {"kind": self.kind, "name": self.name, "vocab_size": self.vocab_size,
                "eot_id": self.eot_id}

    def save(self, directory: str | Path) -> Path:
        """Write ``tokenizer.json`` into ``directory`` (atomically); return its path."""
        path = Path(directory) / TOKENIZER_FILE
        meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **self.to_dict()}
        atomic_write_text(path, json.dumps(meta, indent=1) + "\n")
        return path

    def fingerprint(self) -> str:
        """A short hash identifying the vocabulary (used to key cached shards)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size})"


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as ids 0..255 and end-of-text 256 (vocabulary 257). Needs nothing."""

    kind = "byte"
    name = "byte"
    vocab_size = 257
    eot_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_array(self, text: str) -> np.ndarray:
        """Fast path: the ids as a uint16 array."""
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)

    def decode(self, ids: Sequence[int]) -> str:
        out, run = [], bytearray()
        for i in ids:
            i = int(i)
            if i == self.eot_id:
                out.append(run.decode("utf-8", errors="replace") + EOT_TEXT)
                run = bytearray()
            elif 0 <= i < 256:
                run.append(i)
            else:
                raise DataError(f"token id {i} is outside the byte tokenizer's vocabulary (257)")
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)


# --------------------------------------------------------------------------- tiktoken (GPT-2)
def _import_tiktoken() -> Any:
    try:
        import tiktoken
    except ImportError as exc:
        raise DataError(
            "the GPT-2 tokenizer needs the optional package tiktoken: pip install tiktoken "
            "(or pip install 'mlra[data]')"
        ) from exc
    return tiktoken


def _read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError as exc:
            raise DataError(
                f"{path} is not a .tiktoken vocabulary file (line {n}): {exc}"
            ) from exc
    if not ranks:
        raise DataError(f"{path} is an empty vocabulary file")
    return ranks


def _data_gym_ranks(directory: Path) -> dict[bytes, int] | None:
    for merges, vocab in (("vocab.bpe", "encoder.json"), ("merges.txt", "vocab.json")):
        if (directory / merges).is_file() and (directory / vocab).is_file():
            tiktoken = _import_tiktoken()
            try:
                return tiktoken.load.data_gym_to_mergeable_bpe_ranks(
                    str(directory / merges), str(directory / vocab)
                )
            except (AssertionError, ValueError, KeyError, OSError) as exc:
                raise DataError(
                    f"{directory}: {merges} and {vocab} are not a consistent GPT-2 vocabulary: "
                    f"{exc}"
                ) from exc
    return None


def _load_ranks(path: Path) -> dict[bytes, int]:
    if path.is_dir():
        ranks = _data_gym_ranks(path)
        if ranks is not None:
            return ranks
        found = sorted(path.glob("*.tiktoken"))
        if not found:
            raise DataError(
                f"{path} holds no GPT-2 vocabulary (*.tiktoken, vocab.bpe + encoder.json, or "
                f"merges.txt + vocab.json). {GPT2_HELP}"
            )
        path = found[0]
    if not path.is_file():
        raise DataError(f"GPT-2 vocabulary file {path} does not exist. {GPT2_HELP}")
    return _read_tiktoken_ranks(path)


class TiktokenTokenizer(Tokenizer):
    """A byte-level BPE run by ``tiktoken`` from mergeable ranks read from a local file; the
    end-of-text token takes the id after the last rank (GPT-2: 50256)."""

    kind = "tiktoken"

    def __init__(self, path: str | Path, name: str = "tiktoken") -> None:
        tiktoken = _import_tiktoken()
        from tiktoken_ext.openai_public import r50k_pat_str

        self.path = Path(path)
        ranks = _load_ranks(self.path)
        self.name = name
        self.eot_id = max(ranks.values()) + 1
        self.vocab_size = self.eot_id + 1
        self._enc = tiktoken.Encoding(
            name=f"mlra-{name}", pat_str=r50k_pat_str, mergeable_ranks=ranks,
            special_tokens={EOT_TEXT: self.eot_id},
        )

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(list(texts))

    def decode(self, ids: Sequence[int]) -> str:
        return self._enc.decode([int(i) for i in ids])

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "file": str(self.path)}


class GPT2Tokenizer(Tokenizer):
    """GPT-2 BPE (vocabulary 50257, end-of-text 50256). The vocabulary file is located lazily,
    so a run on ready-made GPT-2 shards (e.g. the official FineWeb-Edu shards) needs no file
    until text is encoded or decoded."""

    kind = "gpt2"
    name = "gpt2"
    vocab_size = GPT2_VOCAB
    eot_id = GPT2_EOT

    def __init__(self, path: str | Path | None = None) -> None:
        self._path = Path(path) if path is not None else None
        self._impl: TiktokenTokenizer | None = None

    def _tok(self) -> TiktokenTokenizer:
        if self._impl is None:
            path = self._path or find_gpt2_file()
            if path is None:
                raise DataError(f"no GPT-2 vocabulary file found. {GPT2_HELP}")
            impl = TiktokenTokenizer(path, name="gpt2")
            if impl.vocab_size != GPT2_VOCAB:
                raise DataError(
                    f"{path} has {impl.vocab_size - 1} mergeable tokens, GPT-2 has "
                    f"{GPT2_VOCAB - 1}: not GPT-2's vocabulary. {GPT2_HELP}"
                )
            self._impl = impl
        return self._impl

    def check(self) -> GPT2Tokenizer:
        """Load the vocabulary now (raises :class:`DataError` with instructions if missing)."""
        self._tok()
        return self

    def encode(self, text: str) -> list[int]:
        return self._tok().encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._tok().encode_batch(texts)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok().decode(ids)


def find_gpt2_file() -> Path | None:
    """The GPT-2 vocabulary named by ``$MLRA_GPT2_BPE``, else ``<cache>/gpt2`` if it holds one."""
    env = os.environ.get(GPT2_ENV)
    if env:
        p = Path(env).expanduser()
        if not p.exists():
            raise DataError(f"{GPT2_ENV}={env} does not exist. {GPT2_HELP}")
        return p
    from mlra.data.cache import cache_dir

    default = cache_dir() / "gpt2"
    if default.is_dir() and (
        any(default.glob("*.tiktoken")) or (default / "vocab.bpe").is_file()
        or (default / "merges.txt").is_file()
    ):
        return default
    return None


def gpt2_tokenizer(path: str | Path | None = None) -> GPT2Tokenizer:
    """The GPT-2 BPE from a local file: ``path``, else ``$MLRA_GPT2_BPE``, else
    ``~/.cache/mlra/gpt2/``. The file is checked now; a missing file or missing tiktoken raises
    :class:`DataError` telling the user how to provide it."""
    return GPT2Tokenizer(path).check()


# --------------------------------------------------------------------------- trained BPE
def _import_hf_tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError as exc:
        raise DataError(
            "a trained BPE tokenizer needs the optional package tokenizers: pip install "
            "tokenizers (or pip install 'mlra[data]')"
        ) from exc
    return tokenizers


class BPETokenizer(Tokenizer):
    """A byte-level BPE (``tokenizers`` library) trained on the user's corpus; its whole
    vocabulary is stored in ``tokenizer.json``."""

    kind = "bpe"

    def __init__(self, hf_tokenizer: Any, name: str = "bpe") -> None:
        self._tok = hf_tokenizer
        self.name = name
        eot = hf_tokenizer.token_to_id(EOT_TEXT)
        if eot is None:
            raise DataError(f"the BPE tokenizer has no {EOT_TEXT} token")
        self.eot_id = int(eot)
        self.vocab_size = int(hf_tokenizer.get_vocab_size(with_added_tokens=True))

    @classmethod
    def train(
        cls, texts: Iterable[str], vocab_size: int = 8192, name: str | None = None,
        length: int | None = None,
    ) -> BPETokenizer:
        """Train a byte-level BPE of ``vocab_size`` ids (end-of-text included) on ``texts``."""
        tk = _import_hf_tokenizers()
        if not 258 <= vocab_size <= 65535:
            raise DataError(f"BPE vocab size must be in [258, 65535], got {vocab_size}")
        tok = tk.Tokenizer(tk.models.BPE())
        tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=[EOT_TEXT], show_progress=False,
            initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        )
        tok.train_from_iterator(texts, trainer=trainer, length=length)
        return cls(tok, name=name or f"bpe{vocab_size}")

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        parts, run = [], []
        for i in ids:
            if int(i) == self.eot_id:
                parts.append(self._tok.decode(run) + EOT_TEXT)
                run = []
            else:
                run.append(int(i))
        parts.append(self._tok.decode(run))
        return "".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "tokenizer": json.loads(self._tok.to_str())}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BPETokenizer:
        tk = _import_hf_tokenizers()
        return cls(tk.Tokenizer.from_str(json.dumps(data["tokenizer"])), name=data["name"])


# --------------------------------------------------------------------------- loading
def tokenizer_from_dict(data: dict[str, Any], source: str = "tokenizer.json") -> Tokenizer:
    """Rebuild a tokenizer from the JSON written by :meth:`Tokenizer.save`."""
    if data.get("format") not in (None, FORMAT_NAME):
        raise DataError(f"{source} is not an mlra tokenizer file (format {data.get('format')!r})")
    kind = data.get("kind")
    try:
        if kind == "byte":
            return ByteTokenizer()
        if kind == "gpt2":
            return GPT2Tokenizer(data.get("file"))
        if kind == "tiktoken":
            return TiktokenTokenizer(data["file"], name=data.get("name", "tiktoken"))
        if kind == "bpe":
            return BPETokenizer.from_dict(data)
    except KeyError as exc:
        raise DataError(f"{source}: missing field {exc}") from exc
    raise DataError(f"{source}: unknown tokenizer kind {kind!r} (byte, gpt2, tiktoken, bpe)")


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """The tokenizer saved in ``directory`` (or the ``tokenizer.json`` file itself)."""
    path = Path(directory)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise DataError(
            f"no tokenizer found at {path}: a prepared data directory or checkpoint holds "
            "tokenizer.json (made by `mlra data prepare` / `mlra train`); otherwise choose one "
            "with --tokenizer byte|gpt2|PATH"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path} is not an mlra tokenizer file")
    return tokenizer_from_dict(data, str(path))


def get_tokenizer(spec: str | None, gpt2_file: str | Path | None = None) -> Tokenizer:
    """A tokenizer from a command-line spec: ``byte``, ``gpt2`` (vocabulary file located lazily
    from ``gpt2_file`` / ``$MLRA_GPT2_BPE`` / the cache), or a path to a ``tokenizer.json`` or a
    directory holding one."""
    if spec in (None, "", "byte"):
        return ByteTokenizer()
    if spec == "gpt2":
        return GPT2Tokenizer(gpt2_file)
    return load_tokenizer(spec)


def batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    """Group an iterable of texts into lists of ``size``."""
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
