"""Pairwise judging with both orders: a judge that prefers one side gives it the wins, a judge that only ever
picks the first position gives ties (the swap cancels it), and an endpoint that fails is retried within bounds.

The judge endpoint is a stand-in: an HTTP server in this test speaking OpenAI's chat-completions format, with a
preference rule we choose. The local judge is the tiny model (its verdicts are whatever its logits say)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kubetune.evaluate.judge import (
    EndpointJudge,
    JudgeError,
    LocalJudge,
    bootstrap_interval,
    compare,
    parse_verdict,
)

PROMPTS = [f"Question {i}?" for i in range(5)]


@contextmanager
def fake_judge(rule: Callable[[str, str], str] | None = None, *, fail_first: int = 0, status: int = 500,
               delay: float = 0.0) -> Iterator[tuple[str, list[dict]]]:
    """An endpoint answering with `rule(answer_a, answer_b)`; the first `fail_first` requests get `status`."""
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # noqa: ANN002
            pass

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"body": body, "auth": self.headers.get("Authorization")})
            time.sleep(delay)
            if len(seen) <= fail_first:
                self.send_response(status)
                self.end_headers()
                return
            text = body["messages"][0]["content"]
            a, b = re.search(r"Answer A:\n(.*)\n\nAnswer B:\n(.*)\n\nThe better", text, re.S).groups()
            reply = {"choices": [{"message": {"role": "assistant", "content": rule(a, b)}}]}
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    finally:
        server.shutdown()
        server.server_close()


def test_a_judge_that_prefers_the_candidate_gives_it_every_win_and_sends_the_key() -> None:
    candidate = [f"A full answer to {p}" for p in PROMPTS]
    baseline = ["no idea"] * 5
    with fake_judge(lambda a, b: "A" if a.startswith("A full") else "Answer: **B**") as (url, seen):
        result = compare(EndpointJudge(url, "judge-1", api_key="s3cret"), PROMPTS, candidate, baseline)
    assert (result.win_rate, result.wins, result.losses, result.ties, result.n) == (1.0, 5, 0, 0, 5)
    assert (result.ci_low, result.ci_high) == (1.0, 1.0)
    assert len(seen) == 10 and all(s["auth"] == "Bearer s3cret" for s in seen)
    assert seen[0]["body"]["model"] == "judge-1" and seen[0]["body"]["temperature"] == 0


def test_a_judge_that_always_picks_the_first_position_is_cancelled_by_the_swap() -> None:
    with fake_judge(lambda a, b: "A") as (url, _):
        result = compare(EndpointJudge(url, "j"), PROMPTS, ["x"] * 5, ["y"] * 5)
    assert (result.win_rate, result.ties) == (0.5, 5)


def test_mixed_preferences_give_the_rate_and_an_interval_around_it() -> None:
    candidate = ["long answer here", "s", "long answer here", "s", "long answer here"]
    baseline = ["m", "medium answer", "m", "medium answer", "m"]
    with fake_judge(lambda a, b: "A" if len(a) > len(b) else "B") as (url, _):
        result = compare(EndpointJudge(url, "j"), PROMPTS, candidate, baseline, seed=3)
    assert (result.wins, result.losses, result.win_rate) == (3, 2, 0.6)
    assert result.ci_low < 0.6 < result.ci_high
    assert (result.ci_low, result.ci_high) == bootstrap_interval([1, 0, 1, 0, 1], seed=3, resamples=2000)


def test_failures_are_retried_then_reported_with_the_endpoint_and_never_the_key() -> None:
    with fake_judge(lambda a, b: "A", fail_first=2) as (url, seen):
        assert EndpointJudge(url, "j", retries=2, backoff=0.01).verdict("q", "x", "y") == "A"
    assert len(seen) == 3
    with fake_judge(lambda a, b: "A", fail_first=99) as (url, seen), pytest.raises(JudgeError) as err:
        EndpointJudge(url, "j", api_key="s3cret", retries=1, backoff=0.01).verdict("q", "x", "y")
    assert "HTTP 500 after 2 attempt(s)" in str(err.value) and url in str(err.value)
    assert "s3cret" not in str(err.value) and len(seen) == 2
    with fake_judge(lambda a, b: "A", fail_first=99, status=401) as (url, seen), pytest.raises(JudgeError):
        EndpointJudge(url, "j", retries=3, backoff=0.01).verdict("q", "x", "y")
    assert len(seen) == 1  # a refused key is not retried
    with fake_judge(lambda a, b: "A", delay=2.0) as (url, _), pytest.raises(JudgeError, match="TimeoutError"):
        started = time.monotonic()
        EndpointJudge(url, "j", timeout=0.3, retries=1, backoff=0.01).verdict("q", "x", "y")
    assert time.monotonic() - started < 2.0  # bounded: two 0.3 s attempts, not the endpoint's 2 s each


def test_verdicts_are_read_from_free_text() -> None:
    assert [parse_verdict(t) for t in ("B", "Answer A.", "**B**", "neither", "A: clearly")] == [
        "B", "A", "B", None, "A"]


def test_a_local_model_judges_deterministically(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    judge = LocalJudge(AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(),
                       AutoTokenizer.from_pretrained(tiny_model_dir))
    verdicts = [judge.verdict(p, "an answer", "another answer") for p in PROMPTS[:2]]
    assert set(verdicts) <= {"A", "B"}
    assert verdicts == [judge.verdict(p, "an answer", "another answer") for p in PROMPTS[:2]]
    result = compare(judge, PROMPTS[:2], ["an answer"] * 2, ["another answer"] * 2)
    assert result.n == 2 and 0.0 <= result.win_rate <= 1.0
