"""Write an mlra model (and its tokenizer) as a transformers directory."""

from __future__ import annotations

from pathlib import Path

import torch

from mlra.data.tokenizers import Tokenizer, save_hf_tokenizer
from mlra.hf.modeling import MlraForCausalLM
from mlra.model import Transformer


def export_hf(
    model: Transformer, directory: str | Path, tokenizer: Tokenizer | None = None
) -> Path:
    """Save ``model`` with ``save_pretrained`` (config.json with ``auto_map``, safetensors,
    generation_config.json, the remote-code modules) and, with ``tokenizer``, its Hugging Face
    ``tokenizer.json`` + ``tokenizer_config.json``. End-of-text is the EOS/BOS/pad token."""
    directory = Path(directory)
    ids = {}
    if tokenizer is not None:
        ids = dict(eos_token_id=tokenizer.eot_id, bos_token_id=tokenizer.eot_id,
                   pad_token_id=tokenizer.eot_id)
    with torch.no_grad():
        lm = MlraForCausalLM.from_model(model, **ids)
        lm.save_pretrained(directory)
    if tokenizer is not None:
        save_hf_tokenizer(tokenizer, directory, model_max_length=model.config.max_seq_len)
    return directory
