"""The HTTP front end served in this process (uvicorn in a thread, loopback): a request that
raises inside the model is a 5xx for that request only; chat completions through a checkpoint's
chat template; the remote-tokenizer routes lm-eval uses."""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager

import pytest
from conftest import poison_embeddings, tiny_model

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from test_serve_http import get, post  # noqa: E402

import mlra  # noqa: E402
from mlra.data.tokenizers import EOT_TEXT, ByteTokenizer  # noqa: E402
from mlra.parallel.launch import free_port  # noqa: E402
from mlra.serve import Engine  # noqa: E402
from mlra.serve.app import ServerState, create_app  # noqa: E402
from mlra.serve.loop import EngineLoop  # noqa: E402
from mlra.serve.metrics import ServeMetrics  # noqa: E402
from mlra.serve.server import find_chat_template  # noqa: E402

TOK = ByteTokenizer()
TEMPLATE = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


@contextmanager
def served(model, chat_template=None):
    engine = Engine(model, cache_tokens=512, page_size=16, vocab_limit=TOK.vocab_size)
    metrics = ServeMetrics(engine.cache.num_pages)
    loop = EngineLoop(engine, metrics).start()
    state = ServerState(loop=loop, metrics=metrics, model_name="m",
                        max_model_len=model.config.max_seq_len,
                        vocab_size=model.config.vocab_size, tokenizer=TOK,
                        chat_template=chat_template)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(state), host="127.0.0.1", port=port,
                                           log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    end = time.monotonic() + 60
    while not server.started and time.monotonic() < end:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", engine
    finally:
        server.should_exit = True
        thread.join(30)


def test_a_request_raising_in_the_model_is_a_500_and_the_server_goes_on(monkeypatch):
    model = tiny_model("mlra_4", vocab_size=260)
    poison = TOK.encode("#")[0]
    poison_embeddings(monkeypatch, model, poison)
    with served(model) as (url, engine):
        status, body = post(url + "/v1/completions", {"prompt": "bad # prompt", "max_tokens": 4,
                                                      "temperature": 0})
        assert status == 500 and "injected fault" in body["error"]["message"]
        assert body["error"]["type"] == "server_error"
        status, body = post(url + "/v1/completions", {"prompt": "fine", "max_tokens": 4,
                                                      "temperature": 0, "ignore_eos": True})
        assert status == 200 and body["usage"]["completion_tokens"] == 4
        assert get(url + "/health")[0] == 200 and engine.pages_used == 0


def test_chat_completions_render_the_template(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(
        '{"chat_template": ' + json.dumps(TEMPLATE) + "}")
    template = find_chat_template(tmp_path)
    assert template == TEMPLATE
    model = tiny_model("mla", vocab_size=260)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    prompt = "<system>Be brief.\n<user>Hi\n<assistant>"
    want = mlra.generate(model, [TOK.encode(prompt)], max_new_tokens=6, stop_tokens=[TOK.eot_id],
                         vocab_limit=TOK.vocab_size)[0]
    with served(model, template) as (url, _):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        res = client.chat.completions.create(model="m", messages=messages, max_tokens=6,
                                             temperature=0)
        assert res.choices[0].message.role == "assistant"
        assert res.choices[0].message.content == TOK.decode([t for t in want if t != TOK.eot_id])
        parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="m", messages=messages, max_tokens=6, temperature=0, stream=True)]
        assert "".join(parts) == res.choices[0].message.content


def test_remote_tokenizer_routes():
    model = tiny_model("gqa", vocab_size=260)
    with served(model) as (url, _):
        info = json.loads(get(url + "/tokenizer_info")[1])
        assert info["eos_token"] == EOT_TEXT
        assert post(url + "/tokenize", {"prompt": "héllo"})[1]["tokens"] == TOK.encode("héllo")
        assert post(url + "/tokenize", {"prompt": EOT_TEXT})[1]["tokens"] == [TOK.eot_id]
        ids = TOK.encode("round trip")
        assert post(url + "/detokenize", {"tokens": ids})[1]["prompt"] == "round trip"
        status, err = post(url + "/detokenize", {"tokens": [1, 9999]})
        assert status == 400 and err["error"]["param"] == "tokens"


def test_cli_errors_exit_2(tmp_path, capsys):
    import socket

    from mlra.cli import main
    from mlra.io import save_model

    assert main(["serve", "--checkpoint", str(tmp_path / "nope"), "--device", "cpu"]) == 2
    assert "does not exist" in capsys.readouterr().err
    model = tiny_model("mla", vocab_size=260)
    save_model(model, tmp_path / "m")
    TOK.save(tmp_path / "m")
    assert main(["serve", "--checkpoint", str(tmp_path / "m"), "--prefill-chunk", "0"]) == 2
    assert "--prefill-chunk must be positive" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--checkpoint", str(tmp_path / "m"), "--device", "cpu",
                     "--port", str(port), "--log-level", "critical"]) == 2
    err = capsys.readouterr().err
    assert f"could not listen on 127.0.0.1:{port}" in err and "Traceback" not in err
