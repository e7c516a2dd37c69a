"""Judges for tests: one fixed reply to every request, and every request kept; what the fake judge server saw."""

import json
import urllib.request


class FixedJudge:
    """``complete(messages)`` returns ``reply``; ``requests`` holds the messages it was sent, in order."""

    def __init__(self, reply: str):
        self.reply = reply
        self.requests: list = []

    def complete(self, messages):
        self.requests.append(messages)
        return self.reply


def server_stats(url):
    """What the fake judge server (``fake_judge_server.py``) at ``url`` has seen: its ``GET /stats``."""
    with urllib.request.urlopen(url.removesuffix("/v1") + "/stats", timeout=5) as response:
        return json.loads(response.read())
