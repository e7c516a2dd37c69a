"""What the fake judge server saw (a judge with one fixed reply is ``slimepo.testing.FixedJudge``)."""

import json
import urllib.request


def server_stats(url):
    """What the fake judge server (``fake_judge_server.py``) at ``url`` has seen: its ``GET /stats``."""
    with urllib.request.urlopen(url.removesuffix("/v1") + "/stats", timeout=5) as response:
        return json.loads(response.read())
