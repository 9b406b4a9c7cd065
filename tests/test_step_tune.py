"""``step_tune.py --registers``: the one-row projection candidates compiled for sm_90 on the
CPU (a subprocess without ``TRITON_INTERPRET``, which would replace the kernel by an
interpreted one), the H200 entry in use among them."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import pytest
from conftest import run_without_interpreter

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not installed")


def test_registers_of_the_q_kv_down_entry_and_its_candidates():
    key = "m1:k3072:n1024x576:plain"
    path = os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    stdout = run_without_interpreter(
        [str(ROOT / "benchmarks" / "e2e_decode" / "step_tune.py"), "--registers", "--shapes", key],
        extra_env={"PYTHONPATH": path})
    rows = re.findall(rf"^\| `{key}` \| (in use|#\d+) (.*?) \| (\d+) \| (\d+) / (\d+) \|$",
                      stdout, flags=re.M)
    sys.path.insert(0, str(ROOT / "benchmarks" / "e2e_decode"))
    try:
        import step_tune
    finally:
        sys.path.remove(str(ROOT / "benchmarks" / "e2e_decode"))
    assert [r[0] for r in rows] == ["in use"] + [f"#{i}" for i in
                                                 range(len(step_tune.CANDIDATES[key]))]
    in_use = rows[0]
    assert "'block_k': 4096" in in_use[1]  # the entry in skinny_tuned.json for the H200
    assert 0 < int(in_use[2]) <= 255 and in_use[3:] == ("0", "0"), "the tuned entry spills"


def test_env_sweep_candidates_from_json():
    """``env_sweep.py --candidates``: labels to environments, a config object written as the
    JSON its variable takes; anything but a non-empty object is refused."""
    sys.path.insert(0, str(ROOT / "benchmarks" / "e2e_decode"))
    try:
        import env_sweep
    finally:
        sys.path.remove(str(ROOT / "benchmarks" / "e2e_decode"))
    got = env_sweep.parse_candidates(
        '{"default": {}, "d32": {"MLRA_MERGE_CONFIG": {"block_d": 32}}, '
        '"no prefetch": {"MLRA_PDL_PREFETCH": "0"}}')
    assert list(got) == ["default", "d32", "no prefetch"]
    assert got["default"] == {}
    assert json.loads(got["d32"]["MLRA_MERGE_CONFIG"]) == {"block_d": 32}
    assert got["no prefetch"] == {"MLRA_PDL_PREFETCH": "0"}
    for bad in ("[]", "{}"):
        with pytest.raises(SystemExit, match="candidates"):
            env_sweep.parse_candidates(bad)
