"""``mlra serve --tp 2`` on CPU (gloo): rank 0 serves HTTP and broadcasts the engine's model
operations, rank 1 follows; answers equal the single-process model's. SIGTERM drains and every
rank exits 0; a rank that dies ends the server within seconds with an error naming it."""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest
from test_serve_http import TOK, Server, get, make_checkpoint, post, reference, text_of

pytest.importorskip("fastapi")


@pytest.fixture()
def tp_server(tmp_path):
    model = make_checkpoint(tmp_path / "tiny")
    server = Server(tmp_path / "tiny", "--tp", "2", "--page-size", "16", "--cache-tokens",
                    "512", log=tmp_path / "server.log")
    yield model, server
    server.stop()


def _answers_equal_single_process(model, server) -> None:
    prompts = ["Hello", "tensor parallel"]
    status, body = post(server.url + "/v1/completions", {
        "model": "tiny", "prompt": prompts, "max_tokens": 10, "temperature": 0})
    assert status == 200
    want = reference(model, [TOK.encode(p) for p in prompts], 10)
    got = [c["text"] for c in sorted(body["choices"], key=lambda c: c["index"])]
    assert got == [text_of(w) for w in want]


def test_tp_serves_drains_on_sigterm_and_exits_0(tp_server):
    model, server = tp_server
    health = json.loads(get(server.url + "/health")[1])
    assert health["tp"] == 2 and len(health["ranks"]) == 2
    _answers_equal_single_process(model, server)
    result: dict = {}
    t = threading.Thread(target=lambda: result.setdefault("r", post(
        server.url + "/v1/completions",
        {"model": "tiny", "prompt": "drain", "max_tokens": 40, "temperature": 0,
         "ignore_eos": True})))
    t.start()
    time.sleep(0.5)
    server.proc.send_signal(signal.SIGTERM)  # the launcher forwards it to rank 0
    t.join(120)
    status, body = result["r"]
    assert status == 200 and body["usage"]["completion_tokens"] == 40
    assert server.proc.wait(60) == 0


def test_a_dead_rank_ends_the_server_naming_it(tp_server):
    import os

    model, server = tp_server
    _answers_equal_single_process(model, server)
    ranks = json.loads(get(server.url + "/health")[1])["ranks"]
    os.kill(ranks[1]["pid"], signal.SIGKILL)
    code = server.proc.wait(30)  # seconds, not the collective timeout
    assert code == 2
    log = server.log.read_text()
    assert "rank 1 was killed by SIGKILL" in log
