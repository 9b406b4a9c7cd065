"""lm-eval on mlra models three ways -- ``mlra eval tasks``, the registered ``mlra`` model and
``lm_eval --model hf`` on a converted directory -- give the same numbers on the example tasks
that ship inside the package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

pytest.importorskip("lm_eval")
pytest.importorskip("transformers", minversion="5.24")

import lm_eval  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

import mlra  # noqa: E402, F401  (registers the lm-eval model "mlra")
from mlra.cli import main  # noqa: E402
from mlra.data.tokenizers import ByteTokenizer  # noqa: E402
from mlra.evaluate.harness import EXAMPLE_TASKS, EXAMPLE_TASKS_DIR  # noqa: E402
from mlra.hf import export_hf  # noqa: E402
from mlra.io import save_model  # noqa: E402

METRICS = ("acc,none", "acc_norm,none", "word_perplexity,none", "bits_per_byte,none")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> tuple[Path, Path]:
    """Our model directory and its transformers conversion (byte-level tokenizer)."""
    root = tmp_path_factory.mktemp("lm_eval_models")
    model = tiny_model("gla_2", init_std=0.3, vocab_size=260, max_seq_len=96)
    save_model(model, root / "ours")
    ByteTokenizer().save(root / "ours")
    export_hf(model, root / "hf", ByteTokenizer())
    return root / "ours", root / "hf"


@pytest.fixture(scope="module")
def ours(dirs, tmp_path_factory) -> dict:
    """``mlra eval tasks`` on the example tasks: no --tasks-dir needed."""
    out = tmp_path_factory.mktemp("res") / "ours.json"
    assert main(["eval", "tasks", "--checkpoint", str(dirs[0]), "--tasks", ",".join(EXAMPLE_TASKS),
                 "--no-progress", "--output", str(out)]) == 0
    return json.loads(out.read_text())


def _same(results: dict, ours: dict) -> None:
    for task in EXAMPLE_TASKS:
        for metric in METRICS:
            if metric in ours[task]:
                assert results[task][metric] == pytest.approx(ours[task][metric], rel=1e-4), (
                    task, metric)
    assert ours["mlra_example_choice"]["n"] == 8


def test_registered_mlra_model_matches_mlra_eval_tasks(dirs, ours):
    manager = TaskManager(include_path=str(EXAMPLE_TASKS_DIR), include_defaults=False)
    res = lm_eval.simple_evaluate(model="mlra", model_args=f"checkpoint={dirs[0]},batch_size=3",
                                  tasks=list(EXAMPLE_TASKS), task_manager=manager)
    _same(res["results"], ours)
    with pytest.raises(mlra.DataError, match="unknown mlra model argument"):
        lm_eval.simple_evaluate(model="mlra", model_args=f"checkpoint={dirs[0]},colour=red",
                                tasks=list(EXAMPLE_TASKS), task_manager=manager)


def test_lm_eval_cli_hf_model_matches_mlra_eval_tasks(dirs, ours, tmp_path):
    out = tmp_path / "lm_eval_out"
    cmd = [sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args",
           f"pretrained={dirs[1]},trust_remote_code=True,dtype=float32", "--device", "cpu",
           "--tasks", *EXAMPLE_TASKS, "--include_path", str(EXAMPLE_TASKS_DIR),
           "--batch_size", "4", "--output_path", str(out)]
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    (result_file,) = out.rglob("results_*.json")
    _same(json.loads(result_file.read_text())["results"], ours)


def test_example_tasks_ship_inside_the_package():
    names = {p.name for p in EXAMPLE_TASKS_DIR.iterdir()}
    assert {"mlra_example_choice.yaml", "mlra_example_text.yaml", "utils.py"} <= names
    assert Path(mlra.__file__).parent in EXAMPLE_TASKS_DIR.parents
    assert torch.__version__  # the tasks read their data relative to the package, not the cwd
