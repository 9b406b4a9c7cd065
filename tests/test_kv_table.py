"""KV-cache accounting reproduces the paper's per-device table (its section 2.1)."""

from __future__ import annotations

import json

import pytest

from mlra.cli import main
from mlra.kv_accounting import paper_decode_rows

# d_h per device at TP 1/2/4/8, paper decoding config (R = read from the paper, D = derived)
PAPER = {
    "mha": (128, 64, 32, 16), "mqa": (2, 2, 2, 2), "gqa": (16, 8, 4, 2),
    "mla": (4.5, 4.5, 4.5, 4.5), "mfa": (4, 4, 4, 4), "tpa": (6, 5, 4.5, 4.25),
    "gla_2": (4.5, 2.5, 2.5, 2.5), "gla_4": (4.5, 2.5, 1.5, 1.5), "gta": (8.5, 4.5, 2.5, 1.5),
    "mlra_2": (4.5, 2.5, 1.5, 1.5), "mlra_4": (4.5, 2.5, 1.5, 1.5),
}


def test_paper_table():
    rows = paper_decode_rows()
    got: dict[str, list[float]] = {}
    for r in rows:
        got.setdefault(r.variant, []).append(r.d_h_per_device)
    assert {k: tuple(v) for k, v in got.items()} == PAPER


def test_arithmetic_intensity_matches_paper_derivation():
    ai = {(r.variant, r.tp): r.arithmetic_intensity for r in paper_decode_rows()}
    h = 64
    assert ai[("mla", 1)] == pytest.approx(h * 8.5 / 4.5, rel=1e-3)  # ~1.9h
    assert ai[("mlra_4", 4)] == pytest.approx(h * 2.5 / 1.5, rel=1e-3)  # ~1.67h
    assert ai[("gla_2", 2)] == pytest.approx(h / 2 * 4.5 / 2.5, rel=1e-3)
    assert ai[("mha", 1)] == pytest.approx(1.0)
    assert ai[("gqa", 1)] == pytest.approx(8.0)


def test_cli_json(capsys):
    assert main(["kv-table", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by = {(r["variant"], r["tp"]): r for r in rows}
    assert by[("mlra_4", 4)]["elements_per_token_per_device"] == 192
    assert by[("mla", 4)]["elements_per_token_per_device"] == 576
    assert by[("gqa", 8)]["elements_per_token_per_device"] == 256
    assert by[("mlra_4", 4)]["bytes_per_token_per_device_bf16"] == 384


def test_cli_preset_rows(capsys):
    assert main(["kv-table", "--model", "mla,mlra_4", "--size", "paper", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by = {(r["variant"], r["tp"]): r for r in rows}
    assert by[("mla", 1)]["elements_per_token_total"] == 576
    assert by[("mlra_4", 4)]["elements_per_token_per_device"] == 192
    assert main(["kv-table", "--size", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "mlra_4" in out
    # 4 query heads cannot be split 8 ways: no per-device number is invented for TP 8
    assert "| mha | 8 | 8 | 4 | 2 | - |" in out
    assert main(["kv-table", "--model", "mha", "--size", "tiny", "--tp", "8"]) == 2
