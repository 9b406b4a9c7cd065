"""The decoder-only language model shared by every attention variant.

Llama-style pre-norm blocks (RMSNorm, attention, RMSNorm, SwiGLU), rotate-half RoPE with
explicit positions, tied input/output embeddings, zero-initialised output projections.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mlra.attention import Attention, build_attention
from mlra.config import ModelConfig
from mlra.layers import RMSNorm, Rotary, SwiGLU
from mlra.loss import token_cross_entropy


@dataclass
class ModelOutput:
    """``logits`` [batch, time, vocab]; ``loss`` (next-token cross-entropy) when labels given."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class AttentionContext:
    """Where a block's attention reads its keys from: the default is causal self-attention
    over the block's own input (training, full forward), optionally with a boolean ``mask``
    ``[batch, 1, time, src]`` (padding). Caches subclass this (:mod:`mlra.decoding`) to write
    the new tokens' state and attend over everything cached; the paged decode context also
    sets ``decode_form`` (queries and outputs in the family's decode form) and may swap
    :attr:`pre` / :attr:`post` for compiled versions of :meth:`Block.pre` /
    :meth:`Block.post`."""

    decode_form: bool = False

    def __init__(self, mask: torch.Tensor | None = None) -> None:
        self.mask = mask
        self.pre: Callable[..., tuple] = Block.pre
        self.post: Callable[..., torch.Tensor] = Block.post

    def prepare(self, model: nn.Module, rope: Rotary, dtype: torch.dtype) -> None:
        """Called once per forward, before the first block (e.g. to build RoPE tables outside
        compiled regions)."""

    def attend(self, block: Block, q: object, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """The attention result of ``block`` for queries ``q`` and the new tokens' ``state``."""
        return block.attn.attend(q, state, self.mask)


class Block(nn.Module):
    """x + reduce(attn(norm(x))), then x + reduce(mlp(norm(x))).

    The one block forward of the library: training, prefill and paged decoding all run
    :meth:`forward`, which is :meth:`pre`, the context's ``attend``, then :meth:`post`.
    ``reduce`` is the identity on one device; a tensor-parallel plan sets it to an all-reduce
    over the ranks holding shards of the attention and MLP.
    """

    def __init__(self, cfg: ModelConfig, index: int = 0) -> None:
        super().__init__()
        self.index = index
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn: Attention = build_attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.d_model, cfg.intermediate_size)
        self.reduce: Callable[[torch.Tensor], torch.Tensor] = _identity

    def forward(
        self, x: torch.Tensor, rope: Rotary, ctx: AttentionContext | None = None
    ) -> torch.Tensor:
        ctx = ctx if ctx is not None else AttentionContext()
        h, q, state = ctx.pre(self, x, rope, ctx.decode_form)
        o = ctx.attend(self, q, state)
        return ctx.post(self, x, h, o, ctx.decode_form)

    def pre(
        self, x: torch.Tensor, rope: Rotary, decode_form: bool = False
    ) -> tuple[torch.Tensor, object, dict[str, torch.Tensor]]:
        """The normed input ``h``, the queries and the new tokens' state (in the decode form:
        absorbed queries for the latent family, state packed as the cache stores it)."""
        h = self.attn_norm(x)
        q = self.attn.query(h, rope)
        state = self.attn.kv_state(h, rope)
        if decode_form:
            q, state = self.attn.decode_query(q), self.attn.layout.pack(state)
        return h, q, state

    def post(
        self, x: torch.Tensor, h: torch.Tensor, o: torch.Tensor, decode_form: bool = False
    ) -> torch.Tensor:
        """From the attention result to the block output: (decode form: W_UV and the branch
        sum for the latent family) the output projection, ``reduce``, residuals, the MLP."""
        if decode_form:
            o = self.attn.decode_output(o)
        x = x + self.reduce(self.attn.output(o.to(h.dtype), h))
        return x + self.reduce(self.mlp(self.mlp_norm(x)))


class Transformer(nn.Module):
    """Decoder-only LM over any attention variant: ``model(input_ids)`` -> :class:`ModelOutput`."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        if not any(p.is_meta for p in self.parameters()):
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official initialisation: N(0, std) everywhere, ones for norms, zero output
        projections (attention and MLP) unless ``zero_init_output`` is False; TPA xavier."""
        cfg = self.config
        nn.init.normal_(self.embed.weight, std=cfg.init_std)
        for block in self.layers:
            block.attn.reset_parameters()
            for lin in (block.mlp.w_gate, block.mlp.w_up, block.mlp.w_down):
                nn.init.normal_(lin.weight, std=cfg.init_std)
            if cfg.zero_init_output:
                nn.init.zeros_(block.mlp.w_down.weight)
        for module in self.modules():
            if isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    def num_params(self) -> int:
        """Unique parameters (the tied embedding counted once)."""
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> ModelOutput:
        """Logits for every position, and the next-token loss when ``labels`` is given.

        ``labels`` follow the Hugging Face convention: same shape as ``input_ids`` (the shift is
        done here), -100 ignored. ``attention_mask`` [batch, time] (1 = real token, 0 = padding)
        masks padded keys; positions then count real tokens only unless ``position_ids`` is
        given.
        """
        hidden = self.hidden_states(input_ids, attention_mask, position_ids)
        logits = self.logits(hidden)
        loss = None
        if labels is not None:
            loss = token_cross_entropy(logits[:, :-1], labels[:, 1:])
        return ModelOutput(logits=logits, loss=loss)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final normed hidden states [batch, time, d_model]."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, time], got {tuple(input_ids.shape)}")
        B, T = input_ids.shape
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            else:
                position_ids = torch.arange(T, device=input_ids.device).expand(B, T)
        mask = None if attention_mask is None else padding_causal_mask(attention_mask)
        return self.run(input_ids, position_ids, AttentionContext(mask))

    def run(
        self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: AttentionContext,
        final_norm: bool = True,
    ) -> torch.Tensor:
        """Embed -> every block under ``ctx`` -> final norm: hidden states [batch, time, d]
        (without the final norm if ``final_norm`` is False: a caller that fuses it).

        The one outer loop of the library (training, prefill and paged decoding)."""
        rope = Rotary(positions, self.config.rope_base)
        x = self.embed_tokens(input_ids)
        ctx.prepare(self, rope, x.dtype)
        for block in self.layers:
            x = block(x, rope, ctx)
        return self.norm(x) if final_norm else x

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings (a tensor-parallel plan may replace this with a vocab-parallel one)."""
        return self.embed(input_ids)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Tied output head."""
        return F.linear(hidden, self.embed.weight)


def padding_causal_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Boolean [batch, 1, time, time] mask: causal, padded keys hidden. Every row keeps its own
    position so that padded queries (whose outputs are ignored) never see an empty row."""
    B, T = attention_mask.shape
    causal = torch.ones(T, T, dtype=torch.bool, device=attention_mask.device).tril()
    keep = causal[None] & attention_mask.bool()[:, None, :]
    keep = keep | torch.eye(T, dtype=torch.bool, device=attention_mask.device)[None]
    return keep[:, None]
