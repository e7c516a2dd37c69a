import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler

import pytest

from slimepo import cli
from slimepo.endpoints import check_api_url
from slimepo.eval import alpacaeval, arena_hard
from slimepo.eval.judge import (
    JudgeClient,
    JudgeError,
    judge_answers,
    judge_messages,
    load_judge_prompts,
    load_reference_answers,
    parse_score,
    summarize_scores,
    warn_if_all_failed,
)
from slimepo.testing import FixedJudge

from .fake_judge_server import QuietServer
from .judges import server_stats


def answer(question_id, turn_1, turn_2):
    return {
        "question_id": question_id,
        "answer_id": "x",
        "model_id": "m",
        "choices": [{"index": 0, "turns": [turn_1, turn_2]}],
        "tstamp": 0.0,
    }


def test_judge_prompts_match_fastchat_for_every_question_and_turn(fastchat):
    prompts, references = load_judge_prompts(), load_reference_answers()

    used = set()
    for question, record in zip(fastchat.questions, fastchat.answers, strict=True):
        needs_reference = question["category"] in ("math", "reasoning", "coding")
        reference = references[question["question_id"]] if needs_reference else None
        for turn in (1, 2):
            name, messages = judge_messages(question, record, turn, prompts, reference)
            assert (
                messages == fastchat.oracle["judge_messages"][f"m/{question['question_id']}/{turn}"]
            )
            used.add(name)
    assert used == {
        "single-v1",
        "single-v1-multi-turn",
        "single-math-v1",
        "single-math-v1-multi-turn",
    }


def test_judging_uses_reference_prompts_exactly_where_fastchat_does(fastchat):
    recorder = FixedJudge("[[5]]")
    judged = judge_answers(fastchat.questions, fastchat.answers, recorder)

    assert [r["status"] for r in judged] == ["ok"] * 160
    expected = [
        fastchat.oracle["judge_messages"][f"m/{r['question_id']}/{r['turn']}"] for r in judged
    ]
    assert recorder.requests == expected


def test_scores_are_read_as_fastchat_reads_them(fastchat):
    assert fastchat.oracle["ratings"] == [7, 8.5, 9, 10, -1, -1]  # -1 is FastChat's "no rating"
    assert [parse_score(j) for j in fastchat.judgments] == [7.0, 8.5, 9.0, 10.0, None, None]


def test_scores_outside_one_to_ten_are_not_scores():
    assert parse_score("Rating: [[0]]") is None
    assert parse_score("Rating: [[11]]") is None
    assert parse_score("Rating: [[1]]") == 1.0


def test_client_normalizes_base_url():
    assert JudgeClient("http://h:1/v1/", "j").url == "http://h:1/v1/chat/completions"
    assert (
        JudgeClient("http://h:1/v1/chat/completions", "j").url == "http://h:1/v1/chat/completions"
    )


def test_judging_records_scores_garbage_retries_and_failures(judge_url, monkeypatch):
    monkeypatch.setenv("FAKE_JUDGE_KEY", "secret")
    client = JudgeClient(
        judge_url,
        "fake-judge",
        api_key_env="FAKE_JUDGE_KEY",
        max_retries=2,
        backoff=0.01,
        timeout=0.3,
    )
    questions = [
        {"question_id": 1, "category": "writing", "turns": ["Q1a", "Q1b"]},
        {"question_id": 2, "category": "math", "turns": ["Q2a", "Q2b"]},
        {"question_id": 3, "category": "roleplay", "turns": ["Q3a", "Q3b"]},
        {"question_id": 4, "category": "roleplay", "turns": ["Q4a", "Q4b"]},  # never answered
        {"question_id": 5, "category": "stem", "turns": ["Q5a", "Q5b"]},
    ]
    answers = [
        answer(1, "FAKE:q1t1:score=7", "FAKE:q1t2:single=4"),
        answer(2, "FAKE:q2t1:flaky", "FAKE:q2t2:garbage"),
        answer(3, "FAKE:q3t1:down", "FAKE:q3t2:badjson"),
        answer(5, "FAKE:q5t1:forbidden", "FAKE:q5t2:slow"),
    ]
    references = {2: answer(2, "ref 1", "ref 2")}

    records = judge_answers(questions, answers, client, references=references, max_workers=3)

    outcome = {(r["question_id"], r["turn"]): (r["status"], r["score"]) for r in records}
    assert list(outcome) == [(q, t) for q in (1, 2, 3, 4, 5) for t in (1, 2)]
    assert outcome == {
        (1, 1): ("ok", 7.0),
        (1, 2): ("ok", 4.0),  # "[4]" fallback
        (2, 1): ("ok", 6.0),  # HTTP 500, then success
        (2, 2): ("unparsable", None),
        (3, 1): ("failed", None),  # 500 on every attempt
        (3, 2): ("failed", None),  # 200 that is not JSON
        (4, 1): ("failed", None),  # no answer to grade
        (4, 2): ("failed", None),
        (5, 1): ("failed", None),  # 403 is not retried
        (5, 2): ("failed", None),  # every attempt times out
    }
    by_key = {(r["question_id"], r["turn"]): r for r in records}
    assert by_key[2, 1]["judge_prompt"] == "single-math-v1"
    assert by_key[1, 2]["judge_prompt"] == "single-v1-multi-turn"
    assert by_key[2, 2]["judgment"] == "I would rather not give a number."
    assert "500" in by_key[3, 1]["error"] and "no answer" in by_key[4, 1]["error"]
    assert "403" in by_key[5, 1]["error"]
    assert all(r["error"] is None for r in records if r["status"] != "failed")

    stats = server_stats(judge_url)
    assert stats["attempts"]["q2t1"] == 2
    assert stats["attempts"]["q3t1"] == 3  # first attempt + max_retries
    assert stats["attempts"]["q3t2"] == 3
    assert stats["attempts"]["q5t1"] == 1
    assert set(stats["authorizations"]) == {"Bearer secret"}

    summary = summarize_scores(records)
    assert summary["overall"] == pytest.approx((7 + 4 + 6) / 3)
    assert summary["counts"] == {"ok": 3, "unparsable": 1, "failed": 6}
    assert summary["per_category"] == pytest.approx(
        {"math": 6.0, "roleplay": None, "stem": None, "writing": 5.5}
    )
    assert summary["per_turn"] == pytest.approx({"1": 6.5, "2": 4.0})


def test_the_client_adds_up_requests_replies_and_the_tokens_the_judge_reports(judge_url):
    client = JudgeClient(judge_url, "fake-judge", max_retries=1, backoff=0.01)
    system = {"role": "system", "content": "You grade answers."}  # 3 words

    assert client.complete([system, {"role": "user", "content": "one two FAKE:u1:score=3"}]) == (
        "The answer is fine. Rating: [[3]]")  # 3 + 3 prompt words, 6 reply words
    assert client.complete([system, {"role": "user", "content": "FAKE:u2:flaky"}]) == "Good after all. [[6]]"
    assert client.complete([{"role": "user", "content": "a b c FAKE:u3:nousage"}]) == "[[5]]"
    with pytest.raises(JudgeError):
        client.complete([{"role": "user", "content": "FAKE:u4:down"}])
    with pytest.raises(JudgeError):  # answered (and billed) twice, with no reply in it
        client.complete([{"role": "user", "content": "x FAKE:u5:nochoices"}])

    assert client.usage == {
        "requests": 1 + 2 + 1 + 2 + 2,  # the flaky and the failing ones retried once
        "replies": 3,
        "responses_with_usage": 2 + 2,
        "prompt_tokens": 6 + 4 + 2 * 2,
        "completion_tokens": 6 + 4,
    }


def test_metered_clients_sharing_one_client_at_the_same_time_each_count_their_own(judge_url):
    shared = JudgeClient(judge_url, "fake-judge", max_retries=1, backoff=0.01)
    shared.complete([{"role": "user", "content": "FAKE:m0:score=2"}])  # before: in neither meter
    before = dict(shared.usage)
    first, second = shared.metered(), shared.metered()
    assert (first.url, first.model, first.max_retries) == (shared.url, shared.model, shared.max_retries)

    def ask(client, tags):
        for tag in tags:
            client.complete([{"role": "user", "content": f"FAKE:{tag}"}])

    threads = [threading.Thread(target=ask, args=(first, [f"mone{i}:score=3" for i in range(6)])),
               threading.Thread(target=ask, args=(second, ["mtwo0:flaky", "mtwo1:score=4"]))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert (first.usage["requests"], first.usage["replies"]) == (6, 6)
    assert (second.usage["requests"], second.usage["replies"]) == (2 + 1, 2)  # the flaky one retried
    assert first.usage["prompt_tokens"] > 0 and second.usage["completion_tokens"] > 0
    assert shared.usage == {key: before[key] + first.usage[key] + second.usage[key] for key in before}
    assert (shared.usage["requests"], shared.usage["replies"]) == (1 + 6 + 3, 1 + 6 + 2)


def test_unreachable_judge_raises_after_retries():
    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = JudgeClient(f"http://127.0.0.1:{port}/v1", "j", max_retries=1, backoff=0.01, timeout=1)

    with pytest.raises(JudgeError, match="2 attempts"):
        client.complete([{"role": "user", "content": "hi"}])


def test_summary_never_counts_failures_as_scores():
    records = [
        {"question_id": 1, "turn": 1, "category": "a", "score": 8.0, "status": "ok"},
        {"question_id": 1, "turn": 2, "category": "a", "score": None, "status": "failed"},
        {"question_id": 2, "turn": 1, "category": "b", "score": None, "status": "unparsable"},
    ]

    summary = summarize_scores(records)

    assert summary["overall"] == 8.0
    assert summary["per_category"] == {"a": 8.0, "b": None}
    assert summary["counts"] == {"ok": 1, "unparsable": 1, "failed": 1}
    assert summarize_scores([])["overall"] is None


class Recorder(BaseHTTPRequestHandler):
    """Answers every request with ``server.status`` and ``Location: server.location`` and
    notes each request's method and Authorization header in ``server.seen``."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        self._answer()

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer()

    def _answer(self):
        self.server.seen.append((self.command, self.headers.get("Authorization")))
        body = b'{"choices": [{"message": {"content": "[[10]]"}}]}'
        self.send_response(self.server.status)
        if self.server.location:
            self.send_header("Location", self.server.location)
        self.send_header("Content-Length", str(len(body) if self.server.status == 200 else 0))
        self.end_headers()
        if self.server.status == 200:
            self.wfile.write(body)


@pytest.fixture
def serve():
    """Start a :class:`Recorder` server on 127.0.0.1 answering ``status`` (and ``location``); its URL."""
    servers = []

    def start(status, location=None):
        server = QuietServer(("127.0.0.1", 0), Recorder)
        server.status, server.location, server.seen = status, location, []
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server, f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_refused_and_its_target_never_sees_the_key(serve, monkeypatch, status):
    monkeypatch.setenv("FAKE_JUDGE_KEY", "secret")
    elsewhere, elsewhere_url = serve(200)
    judge, judge_url = serve(status, elsewhere_url + "/v1/chat/completions")
    client = JudgeClient(judge_url + "/v1", "j", api_key_env="FAKE_JUDGE_KEY", max_retries=2, backoff=0.01)

    with pytest.raises(JudgeError, match=f"refusing to follow a redirect to {elsewhere_url}/v1/chat/completions"):
        client.complete([{"role": "user", "content": "hi"}])

    assert judge.seen == [("POST", "Bearer secret")]  # asked once: a redirect is not retried
    assert elsewhere.seen == []


@pytest.mark.parametrize("url", ["http://h:1/v1", "https://api.example.com/v1", "HTTPS://h/v1/chat/completions"])
def test_http_and_https_judge_urls_are_accepted(url):
    check_api_url(url, "judge_url")
    JudgeClient(url, "j")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://user:pass@127.0.0.1:1/v1", "--judge-key-env"),
        ("https://key@h/v1", "--judge-key-env"),
        ("file:///etc/passwd#", "http:// or https://"),
        ("ftp://h/v1", "http:// or https://"),
        ("127.0.0.1:8000/v1", "http:// or https://"),
        ("http:///v1", "with a host"),
    ],
)
def test_judge_urls_other_than_plain_http_or_https_are_refused(url, message):
    with pytest.raises(ValueError, match=f"^judge_url: .*{message}"):
        check_api_url(url, "judge_url")
    with pytest.raises(ValueError, match=message):
        JudgeClient(url, "j")


def test_the_password_in_a_refused_judge_url_is_not_repeated():
    with pytest.raises(ValueError) as refused:
        check_api_url("http://user:hunter2@h/v1", "judge_url")
    assert "hunter2" not in str(refused.value)


def test_eval_refuses_a_judge_url_with_a_password_before_loading_a_model(capsys, monkeypatch):
    monkeypatch.setattr("slimepo.eval.run.evaluate", lambda *a, **k: pytest.fail("evaluate was called"))

    status = cli.main(["eval", "--judge-url", "http://u:p@127.0.0.1:1/v1", "--judge-model", "m", "--bench", "mt-bench"])

    assert status == 2
    assert "judge_url: must not hold a user name or password" in capsys.readouterr().err


def test_a_judge_that_failed_every_request_gets_one_warning_with_the_first_error(caplog):
    mtbench = [{"question_id": q, "turn": 1, "category": "a", "score": None, "status": "failed",
                "error": f"JudgeError: refused {q}"} for q in (1, 2, 3)]
    arena = [{"uid": "x", "category": "a", "games": [{"verdict": None, "error": "JudgeError: refused a"}] * 2}]
    alpaca = [{"preference": None, "error": "JudgeError: refused b"}, {"preference": None, "error": "other"}]

    for summarize, records, first in [(summarize_scores, mtbench, "refused 1"),
                                      (arena_hard.summarize_verdicts, arena, "refused a"),
                                      (alpacaeval.summarize_preferences, alpaca, "refused b")]:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="slimepo.eval.judge"):
            summarize(records)
        assert [r.levelname for r in caplog.records] == ["WARNING"]
        assert first in caplog.records[0].getMessage() and "all" in caplog.records[0].getMessage()


def test_no_warning_while_some_judge_request_got_a_reply(caplog):
    mtbench = [{"question_id": 1, "turn": 1, "category": "a", "score": None, "status": "failed", "error": "x"},
               {"question_id": 1, "turn": 2, "category": "a", "score": None, "status": "unparsable", "error": None}]
    arena = [{"uid": "x", "category": "a", "games": [{"verdict": None, "error": "x"}, {"verdict": "A>B", "error": None}]}]
    alpaca = [{"preference": None, "error": "x"}, {"preference": 2, "error": None}]

    with caplog.at_level(logging.WARNING, logger="slimepo.eval.judge"):
        summarize_scores(mtbench)
        arena_hard.summarize_verdicts(arena)
        alpacaeval.summarize_preferences(alpaca)
        warn_if_all_failed([], "nothing")

    assert caplog.records == []
