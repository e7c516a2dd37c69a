"""Fixtures of the pairs tests: the tiny model as an engine, prompt files, a fake chat server."""

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from slimepo.generation.hf import HFEngine

JUDGE_SERVER = Path(__file__).resolve().parents[1] / "eval" / "fake_judge_server.py"


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir):
    return HFEngine.load(str(tiny_model_dir), batch_size=4)


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def judge_url():
    """The eval tests' fake judge, a separate process on a free 127.0.0.1 port."""
    server = subprocess.Popen([sys.executable, str(JUDGE_SERVER)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        yield f"http://127.0.0.1:{int(server.stdout.readline())}/v1"
    finally:
        server.terminate()
        server.wait(timeout=10)


class ChatHandler(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat server: echoes the request's seed and temperature.

    Paths: ``/v1/...`` answers; ``/flaky/v1/...`` answers HTTP 500 to each prompt's first request;
    ``/moved/v1/...`` redirects to ``/v1/...``; ``/cut/v1/...`` ends with ``finish_reason: length``.
    """

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server = self.server
        with server.lock:
            server.requests.append({"path": self.path, "body": body, "authorization": self.headers.get("Authorization")})
            prompt = body["messages"][-1]["content"]
            server.attempts[prompt] = server.attempts.get(prompt, 0) + 1
            attempt = server.attempts[prompt]
        if self.path.startswith("/moved/"):
            self.send_response(302)
            self.send_header("Location", self.path.removeprefix("/moved"))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path.startswith("/flaky/") and attempt == 1:
            return self._send(500, {"error": "overloaded"})
        text = f" {prompt} | seed={body['seed']} temperature={body['temperature']} "
        finish = "length" if self.path.startswith("/cut/") else "stop"
        self._send(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                      "finish_reason": finish}],
                         "usage": {"prompt_tokens": 3, "completion_tokens": len(text.split())}})

    def _send(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def chat_server():
    """``(base URL, server)``; ``server.requests`` holds every request seen."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), ChatHandler)
    server.daemon_threads = True
    server.lock, server.requests, server.attempts = threading.Lock(), [], {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server
    finally:
        server.shutdown()
        server.server_close()


class ScriptedEngine:
    """An engine whose answer ``i`` to a conversation is ``answer(conversation, i)``; it records
    the last user turn of every conversation it was asked about, and raises ``fail`` on call
    number ``fail_on`` (1-based) when given; answer ``i`` ended iff ``ended(conversation, i)``."""

    name = "scripted"

    def __init__(self, answer, fail_on=None, fail=KeyboardInterrupt, ended=lambda conversation, i: True):
        self.answer, self.fail_on, self.fail, self.ended = answer, fail_on, fail, ended
        self.calls = []

    def generate(self, conversations, decoding, n):
        from slimepo.generation import Sample

        decoding.check_samples(n)
        self.calls.append([c[-1]["content"] for c in conversations])
        if len(self.calls) == self.fail_on:
            raise self.fail()
        return [[Sample(self.answer(c, i), None, self.ended(c, i), None) for i in range(n)] for c in conversations]

    def identity(self):
        return {"engine": self.name}

    def prompt_digest(self, conversation):
        return json.dumps(conversation)
