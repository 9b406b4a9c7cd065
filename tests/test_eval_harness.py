"""lm-evaluation-harness adapter: log-likelihoods, rolling log-likelihoods and generations equal
direct computations with the model; toy tasks whose data ship with the tests run end to end,
offline. Skipped when lm-eval (the optional extra ``eval``) is not installed."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from mlra import DataError, ModelConfig, Transformer  # noqa: E402
from mlra.cli import main  # noqa: E402
from mlra.data.tokenizers import ByteTokenizer  # noqa: E402
from mlra.evaluate.harness import MlraLM, format_results, paper_metric, run_tasks  # noqa: E402
from mlra.io import save_model  # noqa: E402

DATA = Path(__file__).parent / "data" / "lm_eval_toy"
MAX_LEN = 32
TOK = ByteTokenizer()
EOT = TOK.eot_id


@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig.preset("mlra_4", size="tiny", zero_init_output=False, n_layers=2,
                             vocab_size=260, max_seq_len=64)
    return Transformer(cfg).eval()


def _lm(model: Transformer, batch_size: int = 2) -> MlraLM:
    return MlraLM(model, TOK, batch_size=batch_size, max_length=MAX_LEN, progress=False)


def _req(kind: str, *args) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


@torch.no_grad()
def direct_ll(model: Transformer, ctx: str, cont: str) -> tuple[float, bool]:
    """log p(cont | ctx) from one forward of the (left-truncated) sequence."""
    ctx_ids = TOK.encode(ctx) if ctx else [EOT]
    cont_ids = TOK.encode(cont)
    whole = (ctx_ids + cont_ids)[-(MAX_LEN + 1):]
    x = torch.tensor(whole[:-1])[None]
    logp = torch.log_softmax(model(x).logits[0].double(), -1)[-len(cont_ids):]
    tgt = torch.tensor(cont_ids)
    return logp.gather(-1, tgt[:, None]).sum().item(), bool((logp.argmax(-1) == tgt).all())


@torch.no_grad()
def direct_rolling(model: Transformer, text: str) -> float:
    """Every token predicted once; window w predicts tokens[s:e] with up to MAX_LEN tokens of
    context ending right before its last prediction (lm-eval's rolling-window rule)."""
    tokens = TOK.encode(text)
    seq = [EOT] + tokens
    total = 0.0
    for s in range(0, len(tokens), MAX_LEN):
        e = min(s + MAX_LEN, len(tokens))
        inp = seq[max(0, e - MAX_LEN):e]
        logp = torch.log_softmax(model(torch.tensor(inp)[None]).logits[0].double(), -1)
        logp = logp[-(e - s):]
        total += logp.gather(-1, torch.tensor(tokens[s:e])[:, None]).sum().item()
    return total


@torch.no_grad()
def direct_greedy(model: Transformer, ctx: str, n: int) -> str:
    ids = TOK.encode(ctx)
    out: list[int] = []
    for _ in range(n):
        nxt = int(model(torch.tensor(ids + out)[None]).logits[0, -1].argmax())
        if nxt == EOT or nxt >= TOK.vocab_size:
            break
        out.append(nxt)
    return TOK.decode(out)


def test_loglikelihood_matches_direct(model: Transformer) -> None:
    pairs = [("The cat", " sat on the mat"), ("", "hello"), ("x" * 40, " tail end"),
             ("Q: 2+2?", " 4"), ("A", "B")]
    got = _lm(model).loglikelihood([_req("loglikelihood", c, t) for c, t in pairs])
    for (ctx, cont), (ll, greedy) in zip(pairs, got, strict=True):
        want_ll, want_greedy = direct_ll(model, ctx, cont)
        assert ll == pytest.approx(want_ll, abs=1e-3 + 1e-5 * abs(want_ll))
        assert greedy == want_greedy
    # batch size does not change the numbers
    again = _lm(model, batch_size=5).loglikelihood([_req("loglikelihood", c, t) for c, t in pairs])
    assert [g[0] for g in again] == pytest.approx([g[0] for g in got], abs=1e-4)


def test_greedy_flag_is_true_for_the_argmax_continuation(model: Transformer) -> None:
    ctx = "Hello"
    best = direct_greedy(model, ctx, 1)
    if not best:
        pytest.skip("the random model's argmax is not a byte")
    ((_, greedy),) = _lm(model).loglikelihood([_req("loglikelihood", ctx, best)])
    assert greedy


def test_loglikelihood_rolling_matches_direct(model: Transformer) -> None:
    texts = ["short text", "a much longer text that needs several windows of the context " * 2]
    got = _lm(model).loglikelihood_rolling([_req("loglikelihood_rolling", t) for t in texts])
    for text, ll in zip(texts, got, strict=True):
        assert ll == pytest.approx(direct_rolling(model, text), abs=1e-3)
    assert len(TOK.encode(texts[1])) > 3 * MAX_LEN


def test_generate_until_matches_greedy(model: Transformer) -> None:
    contexts = ["Hello", "Once upon a time", "x"]
    full = [direct_greedy(model, c, 6) for c in contexts]
    stop = next((t[2] for t in full if len(t) > 3), "\n")
    reqs = [_req("generate_until", c, {"until": [stop], "max_gen_toks": 6}) for c in contexts]
    got = _lm(model).generate_until(reqs)
    assert got == [t.split(stop)[0] for t in full]


def _tasks_dir(tmp_path: Path) -> Path:
    out = tmp_path / "tasks"
    out.mkdir()
    for yaml in DATA.glob("*.yaml"):
        (out / yaml.name).write_text(yaml.read_text().replace("@DATA_DIR@", str(DATA)))
    return out


@pytest.fixture()
def hf_cache(tmp_path: Path, monkeypatch) -> Path:
    import datasets.config

    cache = tmp_path / "hf_datasets"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


def test_toy_tasks_end_to_end(model: Transformer, tmp_path: Path, hf_cache: Path) -> None:
    results = run_tasks(_lm(model, batch_size=4),
                        ["mlra_toy_choice", "mlra_toy_rolling", "mlra_toy_gen"],
                        tasks_dir=_tasks_dir(tmp_path))
    docs = [json.loads(line) for line in (DATA / "toy_choice.jsonl").read_text().splitlines()]
    acc = acc_norm = 0
    for doc in docs:
        lls = [direct_ll(model, doc["question"], " " + c)[0] for c in doc["choices"]]
        acc += max(range(len(lls)), key=lambda i: lls[i]) == doc["label"]
        norm = [ll / len(c) for ll, c in zip(lls, doc["choices"], strict=True)]
        acc_norm += max(range(len(norm)), key=lambda i: norm[i]) == doc["label"]
    choice = results["mlra_toy_choice"]
    assert choice["acc,none"] == pytest.approx(acc / len(docs))
    assert choice["paper_metric"] == "acc_norm"
    assert choice["paper_value"] == pytest.approx(acc_norm / len(docs))
    assert choice["n"] == len(docs)

    texts = [json.loads(line)["text"] for line in (DATA / "toy_text.jsonl").read_text().split("\n")
             if line]
    ll = sum(direct_rolling(model, t) for t in texts)
    words = sum(len(re.split(r"\s+", t)) for t in texts)
    rolling = results["mlra_toy_rolling"]
    assert rolling["paper_metric"] == "word_perplexity"
    assert rolling["word_perplexity,none"] == pytest.approx(math.exp(-ll / words), rel=1e-3)

    gens = [json.loads(line) for line in (DATA / "toy_gen.jsonl").read_text().splitlines()]
    em = sum(
        re.split(r"[\n.]", direct_greedy(model, g["prompt"], 6))[0] == g["answer"] for g in gens
    )
    assert results["mlra_toy_gen"]["exact_match,none"] == pytest.approx(em / len(gens))
    table = format_results(results)
    assert "| mlra_toy_choice | acc_norm |" in table and "average of 2" in table


def test_missing_offline_data_is_a_clear_error(model: Transformer, tmp_path: Path,
                                               hf_cache: Path) -> None:
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "missing.yaml").write_text(
        "task: mlra_toy_missing\n"
        "dataset_path: mlra-nonexistent/never-downloaded\n"
        "output_type: multiple_choice\n"
        "test_split: test\n"
        "doc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\n"
        "doc_to_target: label\n"
        "metric_list:\n  - metric: acc\n"
    )
    with pytest.raises(DataError, match="not available offline for 1 of 1") as err:
        run_tasks(_lm(model), ["mlra_toy_missing"], tasks_dir=tasks)
    assert "--tasks-dir" in str(err.value)


def test_unknown_task(model: Transformer, tmp_path: Path, monkeypatch) -> None:
    import lm_eval.tasks

    real = lm_eval.tasks.TaskManager

    def local_only(*args, **kwargs):  # indexing lm-eval's built-in tasks takes ~25 s
        return real(*args, **{**kwargs, "include_defaults": False})

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", local_only)
    with pytest.raises(DataError, match="unknown lm-eval task"):
        run_tasks(_lm(model), ["no_such_task_xyz"], tasks_dir=_tasks_dir(tmp_path))


def test_paper_metric_rule() -> None:
    both = {"alias": "arc_easy", "acc,none": 0.5, "acc_stderr,none": 0.01,
            "acc_norm,none": 0.6, "acc_norm_stderr,none": 0.02}
    assert paper_metric(both) == ("acc_norm", 0.6, 0.02)
    assert paper_metric({"acc,none": 0.7, "acc_stderr,none": 0.03}) == ("acc", 0.7, 0.03)
    assert paper_metric({"sample_len,none": 3, "exact_match,none": 0.25},
                        ["exact_match"]) == ("exact_match", 0.25, None)


def test_eval_tasks_cli(model: Transformer, tmp_path: Path, hf_cache: Path, capsys) -> None:
    directory = tmp_path / "model"
    save_model(model, directory)
    TOK.save(directory)
    out = tmp_path / "results.json"
    code = main(["eval", "tasks", "--checkpoint", str(directory), "--tasks", "mlra_toy_choice",
                 "--tasks-dir", str(_tasks_dir(tmp_path)), "--limit", "3", "--batch-size", "4",
                 "--no-progress", "--output", str(out)])
    assert code == 0
    assert "| mlra_toy_choice | acc_norm |" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["mlra_toy_choice"]["n"] == 3
    code = main(["eval", "tasks", "--checkpoint", str(directory), "--tasks", "mlra_toy_choice",
                 "--tasks-dir", str(tmp_path / "no_dir"), "--no-progress"])
    assert code == 2 and "is not a directory" in capsys.readouterr().err
