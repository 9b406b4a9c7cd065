"""``mlra compare --seeds N``: each variant trains with N different seeds, the table shows the
spread over seeds, and the footnote's noise verdict follows the measured spread."""

from __future__ import annotations

import json
import math
import statistics

import pytest

from mlra.cli import main
from mlra.train.compare import CompareConfig, run_compare
from mlra.train.config import TrainConfig
from mlra.train.seed_stats import noise_footnote, noise_verdict, summarize

pytestmark = pytest.mark.usefixtures("one_thread")

TOY = dict(variants=("mha", "mla"), steps=2, batch_size=2, seq_len=32, eval_interval=1,
           val_tokens=128, warmup_steps=1, progress=False, workers=1)


def test_seed_stats_against_hand_computed_values():
    summaries = summarize({"a": [(1, 7.0), (2, 8.0), (3, 9.0)],   # std 1
                           "b": [(1, 7.1), (2, 7.3), (3, 7.5)],   # std 0.2
                           "c": [(1, 9.0), (2, 9.5), (3, 10.0)]})  # std 0.5
    a, b, c = summaries
    assert (a.mean, a.std, a.low, a.high, a.seeds) == (8.0, 1.0, 7.0, 9.0, (1, 2, 3))
    assert b.std == pytest.approx(0.2) and c.std == pytest.approx(0.5)
    v = noise_verdict(summaries)
    pooled = math.sqrt((1.0 + 0.04 + 0.25) / 3)
    assert v.pooled_std == pytest.approx(pooled)
    assert v.threshold == pytest.approx(2 * pooled * math.sqrt(2 / 3))  # ~1.073
    assert v.best == "b"
    assert v.gaps == pytest.approx({"a": 0.7, "b": 0.0, "c": 2.2})
    assert not v.beyond_noise("a") and v.beyond_noise("c") and not v.beyond_noise("b")
    text = noise_footnote(summaries, v)
    assert "Best mean: b" in text
    assert "Beyond seed noise behind it: c (+2.200)" in text
    assert "Within seed noise of it: a (+0.700)" in text
    assert f"{v.threshold:.3f}" in text and "3 seeds" in text

    # The same means with a tenth of the spread: a's gap is now beyond noise too.
    tight = summarize({s.variant: [(i, s.mean + (p - s.mean) / 10)
                                   for i, p in zip(s.seeds, s.ppls, strict=True)]
                       for s in summaries})
    assert noise_verdict(tight).beyond_noise("a")


def test_noise_verdict_needs_equal_seed_counts():
    with pytest.raises(ValueError, match="same number"):
        noise_verdict(summarize({"a": [(1, 7.0), (2, 8.0)], "b": [(1, 7.0)]}))
    with pytest.raises(ValueError, match="same number"):
        noise_verdict(summarize({"a": [(1, 7.0)], "b": [(1, 7.0)]}))


def test_compare_trains_each_seed_and_reports_the_spread(tmp_path, mlra_cache, capsys):
    out = tmp_path / "cmp"
    cc = CompareConfig(out=str(out), seeds=2, **TOY)
    logs: list[str] = []
    rows = run_compare(cc, log=logs.append)
    table = capsys.readouterr().out
    assert [(r.variant, r.seed) for r in rows] == [
        ("mha", 1234), ("mha", 1235), ("mla", 1234), ("mla", 1235)]
    # Each seed is its own run, trained with its own seed: different weights, different loss.
    for variant in ("mha", "mla"):
        first = json.loads((out / variant / "compare_result.json").read_text())
        second = json.loads((out / f"{variant}-seed1235" / "compare_result.json").read_text())
        assert (first["config"]["seed"], second["config"]["seed"]) == (1234, 1235)
        assert first["row"]["val_loss"] != second["row"]["val_loss"]

    data = json.loads((out / "results.json").read_text())
    assert [(r["variant"], r["seed"]) for r in data["rows"]] == [
        (r.variant, r.seed) for r in rows]
    summary = data["summary"]
    for entry in summary["variants"]:
        ppls = [r.val_ppl for r in rows if r.variant == entry["variant"]]
        assert entry["val_ppl"] == ppls and entry["seeds"] == [1234, 1235]
        assert entry["mean"] == pytest.approx(statistics.fmean(ppls))
        assert entry["std"] == pytest.approx(abs(ppls[0] - ppls[1]) / math.sqrt(2))
        assert (entry["min"], entry["max"]) == (min(ppls), max(ppls))
    stds = [e["std"] for e in summary["variants"]]
    assert summary["pooled_std"] == pytest.approx(math.sqrt(statistics.fmean(s * s for s in stds)))
    assert summary["noise_threshold"] == pytest.approx(2 * summary["pooled_std"])  # sqrt(2/2)
    means = {e["variant"]: e["mean"] for e in summary["variants"]}
    assert summary["best"] == min(means, key=means.get)

    for entry in summary["variants"]:  # the table prints the same numbers
        assert f"{entry['mean']:.3f} ± {entry['std']:.3f}" in table
        assert f"{entry['min']:.3f}–{entry['max']:.3f}" in table
    assert "seeds 1234–1235" in table and "Pooled seed std" in table
    assert (out / "results.md").read_text().count("± ") >= 2

    # Resume: everything finished is reused; a one-seed comparison reuses the first seed's runs.
    logs.clear()
    again = run_compare(CompareConfig(out=str(out), seeds=2, **TOY), log=logs.append)
    assert sum("reusing" in line for line in logs) == 4
    assert [r.val_loss for r in again] == [r.val_loss for r in rows]
    logs.clear()
    capsys.readouterr()
    one = run_compare(CompareConfig(out=str(out), **TOY), log=logs.append)
    assert sum("reusing" in line for line in logs) == 2
    assert [r.val_loss for r in one] == [rows[0].val_loss, rows[2].val_loss]
    single = capsys.readouterr().out
    assert "±" not in single and "the seed spread is not measured" in single
    assert "summary" not in json.loads((out / "results.json").read_text())


def test_seed_runs_differ_only_in_seed_and_directory(tmp_path):
    cc = CompareConfig(out=str(tmp_path), seeds=3, **TOY)
    assert cc.seed_list == [1234, 1235, 1236]
    first, third = cc.train_config("mla"), cc.train_config("mla", 1236)
    assert isinstance(third, TrainConfig) and third.seed == 1236
    assert first.out == str(tmp_path / "mla") and third.out == str(tmp_path / "mla-seed1236")
    assert {k: v for k, v in first.to_dict().items() if k not in ("seed", "out")} == \
        {k: v for k, v in third.to_dict().items() if k not in ("seed", "out")}
    assert len(cc.jobs()) == 6 and cc.plan()[0] == 1


def test_cli_rejects_bad_seed_count(tmp_path, capsys):
    code = main(["compare", "--seeds", "0", "--out", str(tmp_path / "c")])
    assert code == 2
    assert "--seeds" in capsys.readouterr().err
