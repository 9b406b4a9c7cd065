"""``mlra serve`` as a real server process on a free loopback port, driven by real clients:
the official ``openai`` client (completions, streaming, batches, seeds), lm-eval's
``local-completions`` model (numbers equal ``mlra eval tasks``), 32 concurrent streams over a
cache smaller than their total, disconnects that free their pages, OpenAI-style 4xx errors,
and SIGTERM draining the open requests before exiting 0.

Skipped when the ``serve`` extra (fastapi, uvicorn, prometheus_client) or ``openai`` is missing.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
openai = pytest.importorskip("openai")

import mlra  # noqa: E402
from mlra.data.tokenizers import ByteTokenizer  # noqa: E402
from mlra.io import save_model  # noqa: E402
from mlra.parallel.launch import free_port  # noqa: E402

TOK = ByteTokenizer()
EOT = TOK.eot_id
CTX = 128
PAGE = 16
CACHE_TOKENS = 256  # 16 pages: far less than 32 concurrent requests hold together
START_TIMEOUT_S = 180


# ----------------------------------------------------------------------------- helpers
def make_checkpoint(directory: Path, name: str = "mlra_4") -> mlra.Transformer:
    torch.manual_seed(0)
    cfg = mlra.ModelConfig.preset(name, size="tiny", zero_init_output=False, n_layers=2,
                                  vocab_size=260, max_seq_len=CTX)
    model = mlra.Transformer(cfg).eval()
    save_model(model, directory)
    TOK.save(directory)
    return model


class Server:
    """``mlra serve`` in a subprocess; ``url`` once ``/health`` answers."""

    def __init__(self, checkpoint: Path, *extra: str, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlra", "serve", "--checkpoint", str(checkpoint),
             "--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu", *extra],
            stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=env,  # noqa: SIM115
        )
        end = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {log.read_text()}")
            try:
                if get(self.url + "/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the server did not start: {log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def post(url: str, body: bytes | dict) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def metric(url: str, name: str) -> float:
    _, text = get(url + "/metrics")
    found = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


def wait_idle(url: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if (metric(url, "mlra_requests_running") == 0 and metric(url, "mlra_requests_waiting") == 0
                and metric(url, "mlra_cache_pages_used") == 0):
            return
        time.sleep(0.2)
    raise AssertionError(f"the server did not become idle: {get(url + '/metrics')[1]}")


def reference(model, prompts: list[list[int]], n: int, **kw) -> list[list[int]]:
    """mlra.generate's tokens (stopping at end-of-text, as the server does by default)."""
    return mlra.generate(model, prompts, max_new_tokens=n, stop_tokens=[EOT],
                         vocab_limit=TOK.vocab_size, **kw)


def text_of(tokens: list[int]) -> str:
    return TOK.decode([t for t in tokens if t != EOT])


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    model = make_checkpoint(root / "tiny")
    server = Server(root / "tiny", "--cache-tokens", str(CACHE_TOKENS), "--page-size",
                    str(PAGE), "--prefill-chunk", "32", log=root / "server.log")
    yield model, server, root / "tiny"
    server.stop()


@pytest.fixture()
def client(served):
    _, server, _ = served
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


# ----------------------------------------------------------------------------- tests
def test_models_and_health(served):
    _, server, _ = served
    status, body = get(server.url + "/v1/models")
    assert status == 200 and json.loads(body)["data"][0]["id"] == "tiny"
    status, body = get(server.url + "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"


def test_openai_completions_equal_generate(served, client):
    model, _, _ = served
    prompts = ["Hello", "The quick brown fox", "a"]
    want = reference(model, [TOK.encode(p) for p in prompts], 12)
    res = client.completions.create(model="tiny", prompt=prompts, max_tokens=12, temperature=0)
    got = sorted(res.choices, key=lambda c: c.index)
    assert [c.text for c in got] == [text_of(w) for w in want]
    assert res.usage.completion_tokens == sum(len([t for t in w if t != EOT]) for w in want)
    # token-id prompts, one at a time
    ids = [5, 6, 7, 8]
    res = client.completions.create(model="tiny", prompt=ids, max_tokens=5, temperature=0)
    assert res.choices[0].text == text_of(reference(model, [ids], 5)[0])


def test_seeded_sampling_equals_generate_and_n_choices(served, client):
    model, _, _ = served
    prompts = ["Once", "upon a time"]
    kw = dict(temperature=0.8, top_p=0.9)
    want = reference(model, [TOK.encode(p) for p in prompts], 10, seed=11, **kw)
    res = client.completions.create(model="tiny", prompt=prompts, max_tokens=10, seed=11, **kw)
    assert [c.text for c in sorted(res.choices, key=lambda c: c.index)] == [
        text_of(w) for w in want]
    res = client.completions.create(model="tiny", prompt="Once", max_tokens=10, seed=11, n=3,
                                    **kw)
    assert len(res.choices) == 3
    assert sorted(res.choices, key=lambda c: c.index)[0].text == text_of(want[0])


def test_streaming_equals_the_whole_answer(served, client):
    model, _, _ = served
    want = reference(model, [TOK.encode("Stream me")], 20)[0]
    parts, reasons = [], []
    for chunk in client.completions.create(model="tiny", prompt="Stream me", max_tokens=20,
                                           temperature=0, stream=True):
        parts.append(chunk.choices[0].text)
        reasons.append(chunk.choices[0].finish_reason)
    assert "".join(parts) == text_of(want)
    assert reasons[-1] in ("length", "stop") and all(r is None for r in reasons[:-1])


def test_stop_strings_cut_the_text(served, client):
    model, _, _ = served
    full = text_of(reference(model, [TOK.encode("Hello")], 20)[0])
    stop = next((ch for ch in full[2:] if ch.strip() and ch != "\ufffd"), None)
    if stop is None:
        pytest.skip("the random model's continuation has no usable stop character")
    res = client.completions.create(model="tiny", prompt="Hello", max_tokens=20, temperature=0,
                                    stop=[stop])
    assert res.choices[0].text == full[: full.index(stop)]
    assert res.choices[0].finish_reason == "stop"


def test_echo_logprobs_score_the_prompt(served):
    model, server, _ = served
    ids = TOK.encode("Score this text")
    status, body = post(server.url + "/v1/completions", {
        "model": "tiny", "prompt": ids, "max_tokens": 1, "temperature": 0, "logprobs": 1,
        "echo": True})
    assert status == 200
    lp = body["choices"][0]["logprobs"]
    assert len(lp["token_logprobs"]) == len(ids) + 1 and lp["token_logprobs"][0] is None
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([ids])).logits[0, :, :TOK.vocab_size].double(),
                                -1)
    want = [ref[j - 1, ids[j]].item() for j in range(1, len(ids))]
    assert lp["token_logprobs"][1:len(ids)] == pytest.approx(want, abs=1e-4)
    assert body["choices"][0]["text"].startswith("Score this text")


@pytest.mark.parametrize("body, status, param", [
    (b"{not json", 400, "body"),
    ({"model": "nope", "prompt": "x"}, 404, "model"),
    ({"prompt": [1] * (CTX + 5)}, 400, "prompt"),
    ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": CTX}, 400, "max_tokens"),
    ({"prompt": "x", "temperature": -0.5}, 400, "temperature"),
    ({"prompt": [1, 2, 100000]}, 400, "prompt"),
    ({"prompt": [[1, 2], []]}, 400, "prompt"),
    ({"prompt": "x", "top_p": 0}, 400, "top_p"),
    ({"prompt": "x", "n": 0}, 400, "n"),
    ({"prompt": "x", "max_tokens": "many"}, 400, "max_tokens"),
    ({"max_tokens": 3}, 400, "prompt"),
])
def test_bad_requests_are_4xx_naming_the_field(served, body, status, param):
    _, server, _ = served
    got, err = post(server.url + "/v1/completions", body)
    assert got == status
    assert err["error"]["param"] == param and err["error"]["message"]
    assert get(server.url + "/health")[0] == 200  # still serving


def test_chat_without_template_is_a_clear_400(served, client):
    with pytest.raises(openai.BadRequestError, match="chat template"):
        client.chat.completions.create(model="tiny",
                                       messages=[{"role": "user", "content": "hi"}])


def test_32_concurrent_streams_over_a_small_cache(served):
    model, server, _ = served
    prompts = [f"client {i}: " + "x" * (i % 7) for i in range(32)]
    n = 16
    assert 32 * n > CACHE_TOKENS  # the cache cannot hold them all at once
    want = [text_of(t) for t in reference(model, [TOK.encode(p) for p in prompts], n)]
    aclient = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0,
                                 timeout=300)

    async def one(p: str) -> str:
        stream = await aclient.completions.create(model="tiny", prompt=p, max_tokens=n,
                                                  temperature=0, stream=True)
        return "".join([c.choices[0].text async for c in stream])

    async def main():
        return await asyncio.gather(*(one(p) for p in prompts))

    got = asyncio.run(main())
    assert got == want
    wait_idle(server.url)


def test_disconnected_streams_are_aborted_and_free_their_pages(served):
    _, server, _ = served
    before = metric(server.url, 'mlra_requests_total{finish_reason="abort"}') if "abort" in get(
        server.url + "/metrics")[1] else 0.0
    conns = []
    for i in range(3):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        conn.request("POST", "/v1/completions", json.dumps({
            "model": "tiny", "prompt": f"abandon {i}", "max_tokens": 100, "temperature": 0,
            "stream": True, "ignore_eos": True}), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        resp.fp.readline()  # the first event: the request runs
        conns.append(conn)
    assert metric(server.url, "mlra_cache_pages_used") > 0
    for conn in conns:
        conn.sock.close()
        conn.close()
    wait_idle(server.url)
    assert metric(server.url, 'mlra_requests_total{finish_reason="abort"}') >= before + 3


def test_lm_eval_local_completions_equals_mlra_eval(served, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    import datasets.config
    from lm_eval.api.registry import get_model

    from mlra.cli import main
    from mlra.evaluate.harness import run_tasks

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")
    data = Path(__file__).parent / "data" / "lm_eval_toy"
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for yaml in data.glob("*.yaml"):
        (tasks / yaml.name).write_text(yaml.read_text().replace("@DATA_DIR@", str(data)))
    _, server, checkpoint = served
    names = ["mlra_toy_choice", "mlra_toy_gen"]
    lm = get_model("local-completions").create_from_arg_string(
        f"model=tiny,base_url={server.url}/v1/completions,tokenizer_backend=remote,"
        f"tokenized_requests=True,max_length={CTX},batch_size=4,max_retries=1")
    over_http = run_tasks(lm, names, tasks_dir=tasks)
    out = tmp_path / "direct.json"
    assert main(["eval", "tasks", "--checkpoint", str(checkpoint), "--tasks", ",".join(names),
                 "--tasks-dir", str(tasks), "--no-progress", "--output", str(out)]) == 0
    direct = json.loads(out.read_text())
    for name, metrics in (("mlra_toy_choice", ["acc,none", "acc_norm,none"]),
                          ("mlra_toy_gen", ["exact_match,none"])):
        for m in metrics:
            assert over_http[name][m] == pytest.approx(direct[name][m]), (name, m)
        assert over_http[name]["n"] == direct[name]["n"]


def test_sigterm_drains_open_requests_then_exits_0(served):
    """Last: it stops the module's server."""
    _, server, _ = served
    result: dict = {}

    def long_request():
        result["answer"] = post(server.url + "/v1/completions", {
            "model": "tiny", "prompt": "drain", "max_tokens": 60, "temperature": 0,
            "ignore_eos": True})

    t = threading.Thread(target=long_request)
    t.start()
    end = time.monotonic() + 30
    while metric(server.url, "mlra_requests_running") == 0 and time.monotonic() < end:
        time.sleep(0.05)
    server.proc.send_signal(signal.SIGTERM)
    t.join(120)
    status, body = result["answer"]
    assert status == 200 and body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 60
    assert server.proc.wait(60) == 0
