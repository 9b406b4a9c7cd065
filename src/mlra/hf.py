"""A Hugging Face-style causal-LM wrapper, without depending on ``transformers``.

``MlraForCausalLM(model)(input_ids, attention_mask=..., position_ids=..., labels=...)`` returns
an object with ``.logits`` and ``.loss`` (also reachable as ``out["logits"]`` / ``out[0]``), so
loops written for Hugging Face models -- lm-evaluation-harness's log-likelihood requests, simple
``generate`` loops, perplexity scripts -- run on any mlra model. Padding is honoured: padded
keys are masked, positions count real tokens only (left or right padding give the same
logits for the real tokens), and labels at padded positions are ignored.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mlra.config import ModelConfig
from mlra.model import Transformer

IGNORE_INDEX = -100


@dataclass
class CausalLMOutput:
    """``logits`` [batch, time, vocab] and ``loss`` (mean next-token cross-entropy or None).

    Indexable like a Hugging Face ``ModelOutput``: by name, or by position over the fields that
    are not None (``out[0]`` is the loss when labels were given, else the logits).
    """

    logits: torch.Tensor
    loss: torch.Tensor | None = None

    def to_tuple(self) -> tuple[torch.Tensor, ...]:
        order = (self.loss, self.logits)
        return tuple(v for v in order if v is not None)

    def keys(self) -> list[str]:
        return [n for n in ("loss", "logits") if getattr(self, n) is not None]

    def __getitem__(self, key: str | int) -> torch.Tensor:
        if isinstance(key, str):
            if key not in {f.name for f in fields(self)} or getattr(self, key) is None:
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self.to_tuple())


class MlraForCausalLM(nn.Module):
    """Wrap a :class:`~mlra.model.Transformer` with the Hugging Face causal-LM calling
    conventions. ``config`` is the model's :class:`~mlra.config.ModelConfig` (with the HF names
    ``vocab_size``, ``max_position_embeddings``, ``hidden_size`` available as properties of this
    wrapper)."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        variant: str | None = None,
    ) -> MlraForCausalLM:
        """Load any checkpoint :func:`mlra.checkpoints.load_checkpoint` accepts."""
        from mlra.checkpoints import load_checkpoint

        return cls(load_checkpoint(path, device=device, dtype=dtype, variant=variant))

    # -- HF-style attributes ----------------------------------------------------------------
    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def max_position_embeddings(self) -> int:
        return self.config.max_seq_len

    @property
    def hidden_size(self) -> int:
        return self.config.d_model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed

    def tie_weights(self) -> None:
        """No-op: the output head always reads the input embedding."""

    # -- forward ----------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs: Any,
    ) -> CausalLMOutput | tuple[torch.Tensor, ...]:
        """Logits for ``input_ids`` [batch, time] and, with ``labels``, the mean next-token loss
        (labels are shifted here as in HF; -100 and padded positions are ignored).

        ``attention_mask`` [batch, time] (1 = token, 0 = padding, on either side);
        ``position_ids`` default to the count of real tokens before each position.
        ``logits_to_keep`` > 0 returns only the last that many positions' logits.
        ``past_key_values`` is not supported (use :func:`mlra.generate` for cached decoding);
        ``use_cache`` and unknown HF keyword arguments are accepted and ignored.
        """
        if past_key_values is not None:
            raise ValueError(
                "past_key_values is not supported by MlraForCausalLM; use mlra.generate (paged "
                "KV cache) or MlraForCausalLM.generate for cached decoding"
            )
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        if attention_mask is not None:
            attention_mask = attention_mask.to(input_ids.device).reshape(input_ids.shape)
        hidden = self.model.hidden_states(input_ids, attention_mask, position_ids)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.model.logits(hidden)
        loss = None
        if labels is not None:
            if logits_to_keep:
                raise ValueError("labels need the logits of every position (logits_to_keep=0)")
            labels = labels.to(logits.device)
            if attention_mask is not None:
                labels = labels.masked_fill(attention_mask == 0, IGNORE_INDEX)
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                ignore_index=IGNORE_INDEX,
            )
        out = CausalLMOutput(logits=logits, loss=loss)
        return out if return_dict is not False else out.to_tuple()

    # -- generation -------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 20,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        seed: int | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """HF-style ``generate``: ``[batch, time + new]`` = the input (as given, padding
        included) followed by each row's new tokens, right-padded with ``pad_token_id`` (default
        the first EOS id, else 0) after a row stops. Rows may be left- or right-padded
        (``attention_mask``); each row's real tokens are generated from as if alone, through
        the paged cache (:func:`mlra.generate`)."""
        from mlra.generate import generate

        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        prompts = [row[m.bool()].tolist() for row, m in zip(input_ids, mask, strict=True)]
        eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
        new = generate(
            self.model, prompts, max_new_tokens=max_new_tokens,
            temperature=temperature if do_sample else 0.0,
            top_k=top_k if do_sample else None, top_p=top_p if do_sample else None,
            seed=seed, stop_tokens=eos,
        )
        pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
        width = max((len(n) for n in new), default=0)
        tail = torch.full((len(new), width), pad, dtype=input_ids.dtype, device=input_ids.device)
        for i, n in enumerate(new):
            tail[i, : len(n)] = torch.tensor(n, dtype=input_ids.dtype)
        return torch.cat([input_ids, tail], dim=1)
