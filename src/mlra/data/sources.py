"""What ``--data`` means: the built-in corpus, a directory of shards, shard files, or a text /
JSONL file that is prepared on the fly."""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

from mlra.data.corpus import builtin_train_shard, builtin_validation_shard
from mlra.data.prepare import JSONL_SUFFIXES, TEXT_SUFFIXES, prepare
from mlra.data.tokenizers import (
    TOKENIZER_FILE,
    GPT2Tokenizer,
    Tokenizer,
    get_tokenizer,
    load_tokenizer,
)
from mlra.errors import DataError

BUILTIN = "builtin"


@dataclass
class DataSource:
    """Resolved training data: tokenizer, training shards, validation shards."""

    name: str
    tokenizer: Tokenizer
    train: list[Path]
    val: list[Path]
    note: str = ""


def _expand(spec: str) -> list[Path]:
    paths: list[Path] = []
    for part in (s.strip() for s in spec.split(",")):
        if not part:
            continue
        if any(c in part for c in "*?["):
            matched = sorted(Path(p) for p in glob.glob(part))
            if not matched:
                raise DataError(f"no files match {part!r}")
            paths += matched
        else:
            p = Path(part).expanduser()
            if not p.exists():
                raise DataError(f"data path {p} does not exist")
            paths.append(p)
    return paths


def _shards_in(directory: Path, kind: str) -> list[Path]:
    return sorted(p for p in directory.glob("*.bin") if kind in p.name)


def is_text_input(path: Path) -> bool:
    """A file ``mlra data prepare`` turns into shards (text or JSONL, optionally gzipped)."""
    name = path.name.lower().removesuffix(".gz")
    return path.is_file() and Path(name).suffix in TEXT_SUFFIXES | JSONL_SUFFIXES


def resolve_data(
    data: str,
    val_data: str | None = None,
    tokenizer: str | None = None,
    gpt2_file: str | None = None,
    prepare_dir: Path | None = None,
    progress: bool = True,
) -> DataSource:
    """Resolve ``--data`` / ``--val-data`` / ``--tokenizer``.

    - ``builtin``: the built-in corpus (byte tokenizer unless ``tokenizer`` says otherwise).
    - a directory: ``*train*.bin`` and ``*val*.bin`` shards, the tokenizer from its
      ``tokenizer.json`` (``mlra data prepare``), else ``tokenizer``, else GPT-2 (the official
      FineWeb-Edu shards hold GPT-2 ids; its vocabulary file is only needed to read text).
    - ``.bin`` files or globs, comma-separated: training shards (``val_data`` names validation).
    - a text / JSONL file: prepared into ``prepare_dir`` first (byte tokenizer by default).
    """
    if data == BUILTIN:
        tok = get_tokenizer(tokenizer or "byte", gpt2_file)
        val = _expand(val_data) if val_data else [builtin_validation_shard(tok)]
        return DataSource("builtin", tok, [builtin_train_shard(tok)], val)
    paths = _expand(data)
    if len(paths) == 1 and is_text_input(paths[0]):
        if prepare_dir is None:
            raise DataError(f"{paths[0]} is text: prepare it with `mlra data prepare` first")
        tok_spec = tokenizer or "byte"
        if (prepare_dir / TOKENIZER_FILE).is_file() and _shards_in(prepare_dir, "train"):
            note = f"using the shards prepared earlier from {paths[0]} in {prepare_dir}"
        else:
            res = prepare([str(paths[0])], prepare_dir, tok_spec, gpt2_file=gpt2_file,
                          overwrite=True, progress=progress)
            note = res.summary() + (f"; {res.val_note}" if res.val_note else "")
        src = resolve_data(str(prepare_dir), val_data, None, gpt2_file)
        src.name, src.note = str(paths[0]), note
        return src
    note = ""
    if len(paths) == 1 and paths[0].is_dir():
        directory = paths[0]
        train = _shards_in(directory, "train")
        val = _shards_in(directory, "val")
        if not train:
            raise DataError(
                f"{directory} holds no training shards (*train*.bin); make them with "
                "`mlra data prepare` or pass shard files"
            )
        if tokenizer is None and (directory / TOKENIZER_FILE).is_file():
            tok = load_tokenizer(directory)
        elif tokenizer is not None:
            tok = get_tokenizer(tokenizer, gpt2_file)
        else:
            tok = GPT2Tokenizer(gpt2_file)
            note = (f"{directory} has no tokenizer.json: assuming GPT-2 token ids (the official "
                    "shards); pass --tokenizer otherwise")
        name = str(directory)
    else:
        for p in paths:
            if p.is_dir() or p.suffix != ".bin":
                raise DataError(
                    f"{p}: --data takes 'builtin', one directory, one text/JSONL file, or .bin "
                    "shard files (comma-separated or globs)"
                )
        train, val = paths, []
        tok = get_tokenizer(tokenizer, gpt2_file) if tokenizer else GPT2Tokenizer(gpt2_file)
        name = data
    if val_data:
        vp = _expand(val_data)
        if len(vp) == 1 and vp[0].is_dir():
            val = _shards_in(vp[0], "val") or sorted(vp[0].glob("*.bin"))
        else:
            val = vp
    return DataSource(name, tok, train, val, note)
