"""Data: token shards (official format), tokenizers, the built-in corpus, loaders and
``mlra data prepare``."""

from mlra.data.corpus import (
    builtin_documents,
    builtin_shard,
    builtin_text,
    builtin_train_shard,
    builtin_validation_shard,
)
from mlra.data.shards import ShardWriter, read_header, read_shard, write_shard
from mlra.data.tokenizers import (
    BPETokenizer,
    ByteTokenizer,
    GPT2Tokenizer,
    Tokenizer,
    get_tokenizer,
    gpt2_tokenizer,
    load_tokenizer,
)

__all__ = [
    "BPETokenizer", "ByteTokenizer", "GPT2Tokenizer", "ShardWriter", "Tokenizer",
    "builtin_documents", "builtin_shard", "builtin_text", "builtin_train_shard",
    "builtin_validation_shard", "get_tokenizer", "gpt2_tokenizer", "load_tokenizer",
    "read_header", "read_shard", "write_shard",
]
