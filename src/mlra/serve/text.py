"""From a request's tokens to the text of one OpenAI choice: stop strings, streamed deltas,
log-probability records."""

from __future__ import annotations

from typing import Any

from mlra.data.tokenizers import Tokenizer
from mlra.serve.engine import StepOutput, TokenLogprob


def token_text(tokenizer: Tokenizer | None, token: int) -> str:
    """A token as text (its id when the server has no tokenizer)."""
    if tokenizer is None:
        return str(token)
    try:
        return tokenizer.decode([token])
    except Exception:  # noqa: BLE001 - an id past the tokenizer (padded embedding)
        return f"<{token}>"


class Choice:
    """The growing text of one choice.

    ``eot`` (the tokenizer's end-of-text id, a stop token) ends the text without appearing in
    it; ``stops`` are stop strings: the text ends before the first one, which is not returned.
    """

    def __init__(self, index: int, tokenizer: Tokenizer | None, stops: list[str],
                 eot: int | None, prompt: list[int], prefix: str = "") -> None:
        self.index, self.tokenizer, self.stops, self.eot = index, tokenizer, stops, eot
        self.prompt, self.prefix = prompt, prefix
        self.tokens: list[int] = []
        self.logprobs: list[TokenLogprob] = []
        self.prompt_logprobs: list[TokenLogprob | None] | None = None
        self.text = ""
        self.sent = 0  # characters of ``text`` already streamed
        self.finish_reason: str | None = None
        self.error: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def decode(self, ids: list[int]) -> str:
        if self.tokenizer is None:
            return "".join(f" {t}" if i else str(t) for i, t in enumerate(ids))
        return self.tokenizer.decode(ids)

    def add(self, out: StepOutput) -> bool:
        """Take one step's output; True when a stop string ended the choice (the caller
        aborts the request)."""
        if out.prompt_logprobs is not None:
            self.prompt_logprobs = out.prompt_logprobs
        visible = [t for t in out.tokens if t != self.eot]
        self.tokens.extend(visible)
        if out.logprobs:
            self.logprobs.extend(lp for lp in out.logprobs if lp.token != self.eot)
        if out.finished:
            self.finish_reason = out.finish_reason
            self.error = out.error
        if not visible:
            return False
        text = self.decode(self.tokens)
        cut = min((text.find(s) for s in self.stops if s in text), default=-1)
        if cut >= 0:
            self.text = text[:cut]
            self._trim_tokens()
            self.finish_reason = "stop"
            return True
        self.text = text
        return False

    def _trim_tokens(self) -> None:
        """Keep the tokens (and their log-probabilities) that make up the cut text."""
        for k in range(len(self.tokens) + 1):
            if len(self.decode(self.tokens[:k])) >= len(self.text):
                break
        self.tokens = self.tokens[:k]
        self.logprobs = self.logprobs[:k]

    def delta(self) -> str:
        """Text not streamed yet; while running, hold back an incomplete character and a tail
        that may start a stop string."""
        end = len(self.text)
        if not self.finished:
            end = len(self.text.rstrip("\ufffd"))  # may still become a character
            for s in self.stops:
                for k in range(min(len(s) - 1, end), 0, -1):
                    if self.text[:end].endswith(s[:k]):
                        end -= k
                        break
        end = max(end, self.sent)
        out = self.text[self.sent:end]
        self.sent = end
        return out

    def logprobs_json(self, echo: bool, tokens_from: int = 0) -> dict[str, Any]:
        """OpenAI's completion ``logprobs`` object (prompt tokens first with ``echo``)."""
        entries: list[tuple[int, TokenLogprob | None]] = []
        if echo and tokens_from == 0:
            lps = self.prompt_logprobs or [None] * len(self.prompt)
            entries += list(zip(self.prompt, lps, strict=False))
        entries += [(lp.token, lp) for lp in self.logprobs[tokens_from:]]
        tokens, token_lps, tops, offsets = [], [], [], []
        offset = 0
        for tok, lp in entries:
            s = token_text(self.tokenizer, tok)
            tokens.append(s)
            offsets.append(offset)
            offset += len(s)
            token_lps.append(None if lp is None else lp.logprob)
            if lp is None:
                tops.append(None)
            else:
                top: dict[str, float] = {}
                for t, v in lp.top:
                    key = token_text(self.tokenizer, t)
                    top[key] = max(v, top.get(key, float("-inf")))
                tops.append(top)
        return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops,
                "text_offset": offsets}
