"""lm-evaluation-harness adapter: run ``lm_eval`` tasks on our models, offline.

:class:`MlraLM` implements the three request types of ``lm_eval.api.model.LM``:

- ``loglikelihood``: batched (longest first, right padding), fp32 log-softmax, only the
  continuation positions are projected to the vocabulary;
- ``loglikelihood_rolling``: lm-eval's disjoint rolling windows of the model's context, each
  predicted token scored once;
- ``generate_until``: greedy (or sampled) batched generation through :func:`mlra.generate`
  (paged KV cache), cut at the first stop string.

:class:`MlraLM` is registered with lm-eval as model ``mlra`` when ``mlra`` is imported
(:mod:`mlra.evaluate.registry`): ``lm_eval.simple_evaluate(model="mlra",
model_args="checkpoint=DIR")``. Two example tasks ship in :data:`EXAMPLE_TASKS_DIR`
(``mlra_example_choice``, ``mlra_example_text``) and are found without ``--tasks-dir``.

:func:`run_tasks` evaluates tasks zero-shot and reports the paper's metric per task (acc_norm
where the task has it -- ARC-E/C, OpenBookQA, HellaSwag, PIQA -- else acc: BoolQ, Winogrande).
lm-eval reads task data through Hugging Face ``datasets``; we run it in offline mode by default
so a missing dataset is a clear error instead of a download.

This module imports ``lm_eval`` at import time: import it lazily (``pip install 'mlra[eval]'``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm.auto import tqdm

from mlra.data.tokenizers import Tokenizer
from mlra.errors import DataError

PAPER_TASKS = (
    "arc_easy", "arc_challenge", "openbookqa", "boolq", "hellaswag", "winogrande", "piqa",
)
"""The paper's seven zero-shot tasks (Table 4), in its column order."""

EXAMPLE_TASKS_DIR = Path(__file__).parent / "example_tasks"
"""Task YAMLs with their data, shipped inside the package."""
EXAMPLE_TASKS = ("mlra_example_choice", "mlra_example_text")

TokenRequest = tuple[Any, list[int], list[int]]


class MlraLM(TemplateLM):
    """An ``lm_eval`` language model backed by an mlra :class:`~mlra.model.Transformer`.

    ``max_length`` (default: the model's ``max_seq_len``) bounds every forward; longer
    contexts are truncated on the left, as lm-eval's Hugging Face backend does.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Tokenizer,
        batch_size: int = 8,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        autocast_dtype: torch.dtype | None = None,
        progress: bool = True,
    ) -> None:
        super().__init__()
        cfg = model.config
        if tokenizer.vocab_size > cfg.vocab_size:
            raise DataError(
                f"the tokenizer has {tokenizer.vocab_size} ids but the model only "
                f"{cfg.vocab_size}: they do not belong together"
            )
        self.model = model.eval()
        self.tokenizer_impl = tokenizer
        self.batch_size = max(1, int(batch_size))
        self.max_length = int(max_length or cfg.max_seq_len)
        self.max_gen_toks = int(max_gen_toks)
        self.autocast_dtype = autocast_dtype
        self.progress = progress
        self._device = next(model.parameters()).device

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path,
        tokenizer: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int | str | None = None,
        max_length: int | str | None = None,
        max_gen_toks: int | str = 256,
        **ignored: Any,
    ) -> MlraLM:
        """Load ``checkpoint`` (any directory :func:`mlra.load_checkpoint` accepts) and its
        tokenizer (or ``tokenizer``: ``byte``, ``gpt2``, a tokenizer file). String values, as
        lm-eval passes them, are converted. ``max_batch_size`` may come as None from lm-eval;
        any other unknown argument is an error."""
        from mlra.checkpoints import checkpoint_tokenizer, load_checkpoint

        unknown = sorted(k for k, v in ignored.items() if v is not None)
        if unknown:
            raise DataError(f"unknown mlra model argument(s) {unknown}; known: checkpoint, "
                            "tokenizer, device, dtype, batch_size, max_length, max_gen_toks")
        if not checkpoint:
            raise DataError("the mlra lm-eval model needs model_args checkpoint=DIR")
        torch_dtype = None
        if dtype not in (None, "", "auto"):
            torch_dtype = getattr(torch, str(dtype), None)
            if not isinstance(torch_dtype, torch.dtype):
                raise DataError(f"dtype={dtype!r} is not a torch dtype (float32, bfloat16, ...)")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = load_checkpoint(checkpoint, device=device, dtype=torch_dtype)
        size = 8 if batch_size in (None, "", "auto") else int(str(batch_size).split(":")[0])
        return cls(model, checkpoint_tokenizer(checkpoint, tokenizer), batch_size=size,
                   max_length=int(max_length) if max_length else None,
                   max_gen_toks=int(max_gen_toks), progress=False)

    @classmethod
    def create_from_arg_string(
        cls, arg_string: str, additional_config: dict | None = None
    ) -> MlraLM:
        """lm-eval's constructor for ``model_args="checkpoint=DIR,batch_size=4"``."""
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(
        cls, arg_dict: dict[str, Any], additional_config: dict | None = None
    ) -> MlraLM:
        """lm-eval's constructor for a dict of model arguments (see :meth:`from_checkpoint`)."""
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls.from_checkpoint(**{**extra, **arg_dict})

    # ------------------------------------------------------------------ tokenizer
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer_impl.eot_id

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer_impl.name

    def tok_encode(
        self, string: str, add_special_tokens: bool | None = None, **kwargs: Any
    ) -> list[int]:
        return self.tokenizer_impl.encode(string)

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer_impl.decode(tokens)

    # ------------------------------------------------------------------ scoring
    def _autocast(self):
        if self.autocast_dtype in (None, torch.float32):
            return contextlib.nullcontext()
        return torch.autocast(device_type=self._device.type, dtype=self.autocast_dtype)

    @torch.no_grad()
    def _score(self, rows: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(sum of log p(continuation), continuation is the greedy choice) for each
        (context, continuation) token pair, in one right-padded batch."""
        inputs, spans = [], []
        for ctx, cont in rows:
            whole = (ctx + cont)[-(self.max_length + 1):]
            inp = whole[:-1]
            n = min(len(cont), len(inp))
            inputs.append(inp)
            spans.append((len(inp) - n, cont[len(cont) - n:]))
        width = max(len(x) for x in inputs)
        batch = torch.zeros(len(inputs), width, dtype=torch.long)
        for i, inp in enumerate(inputs):
            batch[i, : len(inp)] = torch.tensor(inp, dtype=torch.long)
        batch = batch.to(self._device)
        with self._autocast():
            # right padding: every scored position only sees real tokens (causal), so no mask
            hidden = self.model.hidden_states(batch)
            out = []
            for i, (start, target) in enumerate(spans):
                h = hidden[i, start:start + len(target)]
                logp = torch.log_softmax(self.model.logits(h).float(), dim=-1)
                tgt = torch.tensor(target, dtype=torch.long, device=self._device)
                ll = logp.gather(-1, tgt[:, None]).sum().item()
                greedy = bool((logp.argmax(-1) == tgt).all().item())
                out.append((ll, greedy))
        return out

    def _batched_scores(
        self, rows: list[tuple[list[int], list[int]]], desc: str, disable_tqdm: bool = False
    ) -> list[tuple[float, bool]]:
        """Score many rows, longest first in batches of ``batch_size``; results in input order."""
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]) - len(rows[i][1]))
        results: list[tuple[float, bool] | None] = [None] * len(rows)
        bar = tqdm(total=len(rows), desc=desc, disable=disable_tqdm or not self.progress)
        for s in range(0, len(order), self.batch_size):
            chunk = order[s:s + self.batch_size]
            for i, res in zip(chunk, self._score([rows[i] for i in chunk]), strict=True):
                results[i] = res
            bar.update(len(chunk))
        bar.close()
        return results  # type: ignore[return-value]

    def _loglikelihood_tokens(
        self, requests: list[TokenRequest], disable_tqdm: bool = False, **kwargs
    ) -> list[tuple[float, bool]]:
        rows = [(list(ctx), list(cont)) for _, ctx, cont in requests]
        for (_, _, cont) in requests:
            if not cont:
                raise DataError("lm-eval sent an empty continuation to score")
        results = self._batched_scores(rows, "loglikelihood", disable_tqdm)
        for (key, _, _), res in zip(requests, results, strict=True):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, res)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Total log-likelihood of each string over disjoint windows of ``max_length`` tokens
        (the first token conditioned on end-of-text)."""
        windows, owner = [], []
        for n, req in enumerate(requests):
            (string,) = req.args
            tokens = self.tok_encode(string)
            for pair in get_rolling_token_windows(
                token_list=tokens, prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1,
            ):
                windows.append(make_disjoint_window(pair))
                owner.append(n)
        scores = self._batched_scores(windows, "loglikelihood_rolling", disable_tqdm)
        totals = [0.0] * len(requests)
        for n, (ll, _) in zip(owner, scores, strict=True):
            totals[n] += ll
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", (req.args[0],), total)
        return totals

    # ------------------------------------------------------------------ generation
    def _until_invalid(self, tokens: list[int]) -> list[int]:
        """Tokens before the first end-of-text or id the tokenizer cannot decode (the model's
        vocabulary is padded beyond the tokenizer's, e.g. 50304 vs GPT-2's 50257)."""
        for n, t in enumerate(tokens):
            if t == self.eot_token_id or t >= self.tokenizer_impl.vocab_size:
                return tokens[:n]
        return tokens

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Generate after each context until a stop string (``until``), end-of-text, or
        ``max_gen_toks`` tokens; batched per distinct set of generation arguments."""
        from mlra.generate import generate

        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(repr(sorted(req.args[1].items())), []).append(i)
        out: list[str] = [""] * len(requests)
        bar = tqdm(total=len(requests), desc="generate_until",
                   disable=disable_tqdm or not self.progress)
        for indices in groups.values():
            kwargs = dict(requests[indices[0]].args[1])
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            do_sample = bool(kwargs.pop("do_sample", False))
            temperature = float(kwargs.pop("temperature", 0.0)) if do_sample else 0.0
            context_room = min(self.max_length, self.model.config.max_seq_len) - max_new
            if context_room < 1:
                raise DataError(
                    f"max_gen_toks={max_new} leaves no room for a context in the model's "
                    f"{self.model.config.max_seq_len}-token window"
                )
            prompts = []
            for i in indices:
                ids = self.tok_encode(requests[i].args[0]) or [self.eot_token_id]
                prompts.append(ids[-context_room:])
            for s in range(0, len(prompts), self.batch_size):
                chunk = indices[s:s + self.batch_size]
                with self._autocast():
                    gens = generate(
                        self.model, prompts[s:s + self.batch_size], max_new_tokens=max_new,
                        temperature=temperature, stop_tokens=[self.eot_token_id],
                        top_p=kwargs.get("top_p"), top_k=kwargs.get("top_k"),
                    )
                for i, toks in zip(chunk, gens, strict=True):
                    toks = self._until_invalid(toks)
                    text = self.tok_decode(toks)
                    for stop in until:
                        if stop:
                            text = text.split(stop)[0]
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                bar.update(len(chunk))
        bar.close()
        return out


# ---------------------------------------------------------------------- running tasks
PERCENT_METRICS = ("acc", "acc_norm", "exact_match", "mc1", "mc2", "f1", "em")


def paper_metric(
    task_result: dict[str, Any], metrics: Sequence[str] = ()
) -> tuple[str, float, float | None]:
    """(metric, value, stderr) to report for a task: acc_norm if present, else acc (the paper's
    rule), else the first of the task's own ``metrics`` (e.g. exact_match, word_perplexity)."""
    values: dict[str, tuple[float, float | None]] = {}
    for key, value in task_result.items():
        name, _, filt = key.partition(",")
        if name.endswith("_stderr") or not isinstance(value, (int, float)) or name in values:
            continue
        stderr = task_result.get(f"{name}_stderr,{filt}" if filt else f"{name}_stderr")
        values[name] = (float(value), stderr if isinstance(stderr, float) else None)
    for name in ("acc_norm", "acc", *metrics):
        if name in values:
            return (name, *values[name])
    if not values:
        raise DataError(f"the task produced no numeric metric: {sorted(task_result)}")
    name = next(iter(values))
    return (name, *values[name])


@contextlib.contextmanager
def offline_datasets(enabled: bool = True):
    """Run ``datasets``/``huggingface_hub`` without network access (cache only)."""
    if not enabled:
        yield
        return
    names = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {n: os.environ.get(n) for n in names}
    patched: list[tuple[Any, str, Any]] = []
    try:
        for n in names:
            os.environ[n] = "1"
        with contextlib.suppress(ImportError):  # the flags are read once, at import time
            import datasets.config as dconf

            for attr in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
                if hasattr(dconf, attr):
                    patched.append((dconf, attr, getattr(dconf, attr)))
                    setattr(dconf, attr, True)
        with contextlib.suppress(ImportError):
            import huggingface_hub.constants as hconst

            if hasattr(hconst, "HF_HUB_OFFLINE"):
                patched.append((hconst, "HF_HUB_OFFLINE", hconst.HF_HUB_OFFLINE))
                hconst.HF_HUB_OFFLINE = True
        yield
    finally:
        for mod, attr, value in reversed(patched):
            setattr(mod, attr, value)
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


_MISSING_DATA_HINT = (
    "lm-eval reads task data with Hugging Face datasets, and this run is offline. Either fill "
    "the local datasets cache once on a machine with network (`mlra eval tasks ... "
    "--allow-download`, or `lm_eval --tasks {task} --limit 1 ...`), then copy the cache "
    "(~/.cache/huggingface or $HF_HOME) here; or pass --tasks-dir DIR with task YAMLs whose "
    "data are local files (dataset_path: json, data_files: ...)."
)


def prepare_tasks(
    tasks: Sequence[str] = PAPER_TASKS,
    tasks_dir: str | Path | None = None,
    offline: bool = True,
) -> Any:
    """An lm-eval ``TaskManager`` that knows ``tasks`` (built-in ones, or YAMLs in
    ``tasks_dir``), after checking that every task's data can be read (offline by default).
    Raises :class:`DataError` for unknown tasks or missing data -- before any model is run.
    The example tasks (:data:`EXAMPLE_TASKS`) need no ``tasks_dir``."""
    from lm_eval.tasks import TaskManager

    if tasks_dir is None and tasks and set(tasks) <= set(EXAMPLE_TASKS):
        tasks_dir = EXAMPLE_TASKS_DIR

    if tasks_dir is not None and not Path(tasks_dir).is_dir():
        raise DataError(f"--tasks-dir {tasks_dir} is not a directory")
    manager = None
    if tasks_dir is not None:  # indexing lm-eval's ~15k built-in tasks takes tens of seconds
        manager = TaskManager(include_path=str(tasks_dir), include_defaults=False)
        if not set(tasks) <= set(manager.all_tasks):
            manager = None
    if manager is None:
        manager = TaskManager(include_path=str(tasks_dir) if tasks_dir else None)
    known = set(manager.all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise DataError(
            f"unknown lm-eval task(s) {unknown}"
            + ("" if tasks_dir else "; custom tasks need --tasks-dir DIR with their YAML files")
        )
    with offline_datasets(offline):
        _check_task_data(tasks, manager)
    return manager


def run_tasks(
    lm: MlraLM,
    tasks: Sequence[str] = PAPER_TASKS,
    limit: int | float | None = None,
    num_fewshot: int = 0,
    tasks_dir: str | Path | None = None,
    offline: bool = True,
    seed: int = 1234,
    manager: Any = None,
) -> dict[str, dict[str, Any]]:
    """Evaluate ``tasks`` (one ``simple_evaluate`` call each, as the official script does);
    returns, per task, lm-eval's metric dict plus ``paper_metric``/``paper_value``/
    ``paper_stderr``/``n``. ``manager`` comes from :func:`prepare_tasks` (made here when
    omitted). Missing task data raise :class:`DataError` saying how to provide them."""
    from lm_eval import simple_evaluate

    if manager is None:
        manager = prepare_tasks(tasks, tasks_dir, offline)
    out: dict[str, dict[str, Any]] = {}
    with offline_datasets(offline):
        for task in tasks:
            try:
                res = simple_evaluate(
                    model=lm, tasks=[task], num_fewshot=num_fewshot, limit=limit,
                    task_manager=manager, log_samples=False, random_seed=seed,
                    numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
                    bootstrap_iters=1000,
                )
            except Exception as exc:  # datasets raises many types for a missing offline dataset
                if _looks_like_missing_data(exc):
                    raise DataError(
                        f"task {task}: its data are not available offline ({_first_line(exc)}). "
                        + _MISSING_DATA_HINT.format(task=task)
                    ) from exc
                raise
            if res is None:  # pragma: no cover - non-zero ranks only
                continue
            for name, metrics in res["results"].items():
                own = list(res.get("higher_is_better", {}).get(name, {}))
                metric, value, stderr = paper_metric(metrics, own)
                n = res.get("n-samples", {}).get(name, {}).get("effective")
                out[name] = {**metrics, "paper_metric": metric, "paper_value": value,
                             "paper_stderr": stderr, "n": n}
    return out


def _check_task_data(tasks: Sequence[str], manager: Any) -> None:
    """Load every task's data now; one :class:`DataError` listing every task that lacks it."""
    from lm_eval.tasks import get_task_dict

    missing = []
    for task in tasks:
        try:
            get_task_dict([task], manager)
        except Exception as exc:
            if not _looks_like_missing_data(exc):
                raise
            missing.append(f"{task} ({_first_line(exc)})")
    if missing:
        raise DataError(
            f"task data not available offline for {len(missing)} of {len(tasks)} task(s): "
            + "; ".join(missing) + ". " + _MISSING_DATA_HINT.format(task=",".join(tasks))
        )


def _looks_like_missing_data(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    keys = ("offline", "couldn't reach", "connection", "not found", "doesn't exist",
            "does not exist", "no such file", "datasetnotfound", "filenotfound", "localentry")
    return any(k in text for k in keys) or isinstance(exc, (ConnectionError, FileNotFoundError))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def format_results(results: dict[str, dict[str, Any]]) -> str:
    """Markdown table of the reported metric per task (accuracies in %), with the average of
    the accuracy-type metrics (the paper's "Avg")."""
    lines = ["| task | metric | value | stderr | n |", "|---|---|---:|---:|---:|"]
    percents = []
    for name, r in results.items():
        pct = r["paper_metric"] in PERCENT_METRICS
        scale = 100.0 if pct else 1.0
        value = f"{100 * r['paper_value']:.2f} %" if pct else f"{r['paper_value']:.6g}"
        err = "" if r.get("paper_stderr") is None else f"{scale * r['paper_stderr']:.2f}"
        n = "" if r.get("n") is None else str(r["n"])
        lines.append(f"| {name} | {r['paper_metric']} | {value} | {err} | {n} |")
        if pct:
            percents.append(r["paper_value"])
    if len(percents) > 1:
        avg = 100 * sum(percents) / len(percents)
        lines.append(f"| average of {len(percents)} | | {avg:.2f} % | | |")
    return "\n".join(lines)
