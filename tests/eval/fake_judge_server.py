"""A stand-in OpenAI-compatible judge, run as its own process by the judge tests.

Usage: ``python fake_judge_server.py``; prints its port, then serves until terminated.
It obeys the last ``FAKE:<key>:<action>`` marker in the request's last message (the
graded answer carries it): ``score=N`` replies "Rating: [[N]]", ``single=N`` replies
"Rating: [N]", ``garbage`` replies without a rating, ``flaky`` answers HTTP 500 on the
key's first request and "[[6]]" after, ``down`` always 500, ``badjson`` a 200 that is
not JSON, ``forbidden`` HTTP 403, ``slow`` sleeps 1 s before replying; pairwise (Arena-Hard),
``ours=much|better|tie|worse`` judges the marked answer significantly better, slightly
better, tied or slightly worse, in whichever position (A or B) it stands; AlpacaEval,
``pick=ours|baseline`` replies only the identifier (``m`` or ``M``) of the marked answer's
output or of the other one; ``nousage`` replies "[[5]]" without the ``usage`` field that
every other reply has, ``nochoices`` a 200 with ``usage`` and no reply in it (its "tokens": whitespace-separated words, of all the request's
messages and of the reply). ``GET /stats`` returns the requests seen per key, their
Authorization headers and the usage reported in total.
"""

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MARKER = re.compile(r"FAKE:(\w+):([\w=.]+)")
attempts: dict[str, int] = {}
authorizations: list[str | None] = []
reported = {"prompt_tokens": 0, "completion_tokens": 0}
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        with lock:
            self._send(200, {"attempts": attempts, "authorizations": authorizations, "usage": reported})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.prompt_words = sum(len(m["content"].split()) for m in body["messages"])
        markers = MARKER.findall(body["messages"][-1]["content"])
        key, action = markers[-1] if markers else ("unmarked", "score=5")
        with lock:
            attempts[key] = attempts.get(key, 0) + 1
            attempt = attempts[key]
            authorizations.append(self.headers.get("Authorization"))
        if action.startswith("ours="):
            content = body["messages"][-1]["content"]
            ours = "A" if content.rfind("FAKE:") < content.find("<|The Start of Assistant B's Answer|>") else "B"
            other = "B" if ours == "A" else "A"
            label = {"much": f"{ours}>>{other}", "better": f"{ours}>{other}", "tie": "A=B",
                     "worse": f"{other}>{ours}"}[action[5:]]
            self._reply(f"My final verdict is: [[{label}]]")
        elif action.startswith("pick="):
            content = body["messages"][-1]["content"]
            ours = "m" if content.rfind("FAKE:") < content.find('"model_identifier": "M"') else "M"
            self._reply(ours if action == "pick=ours" else {"m": "M", "M": "m"}[ours])
        elif action.startswith("score="):
            self._reply(f"The answer is fine. Rating: [[{action[6:]}]]")
        elif action.startswith("single="):
            self._reply(f"Decent. Rating: [{action[7:]}]")
        elif action == "garbage":
            self._reply("I would rather not give a number.")
        elif action == "flaky":
            if attempt == 1:
                self._send(500, {"error": "temporarily overloaded"})
            else:
                self._reply("Good after all. [[6]]")
        elif action == "down":
            self._send(500, {"error": "down"})
        elif action == "badjson":
            self._raw(200, b"<html>not json</html>")
        elif action == "forbidden":
            self._send(403, {"error": "forbidden"})
        elif action == "slow":
            time.sleep(1.0)
            self._reply("Too late. [[9]]")
        elif action == "nousage":
            self._reply("[[5]]", usage=False)
        elif action == "nochoices":
            self._reply(None)

    def _reply(self, content, usage=True):
        reply = {} if content is None else {
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}
        if usage:
            reply["usage"] = {"prompt_tokens": self.prompt_words, "completion_tokens": len((content or "").split())}
            with lock:
                for key in reported:
                    reported[key] += reply["usage"][key]
        self._send(200, reply)

    def _send(self, status, payload):
        self._raw(status, json.dumps(payload).encode())

    def _raw(self, status, data):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that timed out has closed its socket: nothing to report


if __name__ == "__main__":
    server = QuietServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
