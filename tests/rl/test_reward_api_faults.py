"""A PPO reward endpoint (`reward_model_type: api`) that hangs, trickles, returns garbage or 500s.

The endpoint is a real `http.server` on a loopback port, run in a thread; each path is one fault.
Every failure must end within its bound (timeout × attempts + backoff) in a clear error naming the
endpoint, and transient faults (a 500, a hang, then a good answer) must be retried to the right scores.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from transformers import AutoTokenizer

from kubetune.rl.rewards import HttpReward, RewardAPIError

GOOD = json.dumps({"scores": [1.0, 2.0]}).encode()


class _Faulty(BaseHTTPRequestHandler):
    """Each path a fault: /hang never answers, /trickle sends a byte a second, /flaky fails twice then scores."""

    hits: Counter = Counter()
    release = threading.Event()  # set at teardown so hung handlers end

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers["Content-Length"]))
        _Faulty.hits[self.path] += 1
        count = _Faulty.hits[self.path]
        if self.path == "/hang":
            _Faulty.release.wait(30)
        elif self.path == "/trickle":  # headers at once, then the body a byte a second: each read is "fast"
            self._head(200, len(GOOD))
            for byte in GOOD:
                if _Faulty.release.wait(1.0):
                    return
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
        elif self.path == "/500":
            self._send(500, b"internal error: model not loaded")
        elif self.path == "/flaky":  # a 500, then a hang, then the scores
            if count == 1:
                self._send(500, b"warming up")
            elif count == 2:
                _Faulty.release.wait(5)
            else:
                self._send(200, GOOD)
        elif self.path == "/garbage":
            self._send(200, b"<html>502 Bad Gateway</html>")
        elif self.path == "/not-utf8":
            self._send(200, b'{"scores": [1.0, "\xff"]}')
        elif self.path == "/wrong-shape":
            self._send(200, json.dumps({"scores": ["1", True]}).encode())
        elif self.path == "/nan":
            self._send(200, b'{"scores": [NaN, 1.0]}')
        elif self.path == "/huge":
            self._head(200, HttpReward.MAX_ANSWER_BYTES + 10)
            self.wfile.write(b" " * (HttpReward.MAX_ANSWER_BYTES + 10))
        elif self.path == "/400":
            self._send(400, b"bad request: texts missing")

    def _head(self, code: int, length: int) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def _send(self, code: int, body: bytes) -> None:
        self._head(code, len(body))
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Faulty)
    server.daemon_threads = True
    _Faulty.hits = Counter()
    _Faulty.release.clear()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        _Faulty.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    return AutoTokenizer.from_pretrained(smollm2_dir)


def _score(tokenizer, url: str, **kwargs):
    ids = [tokenizer.encode("a"), tokenizer.encode("b")]
    return HttpReward(url, tokenizer, **kwargs)(ids, ids, ["", ""])


@pytest.mark.chaos
def test_hanging_and_failing_endpoints_end_in_bounded_clear_errors(chaos_row, tokenizer, endpoint: str) -> None:
    row = chaos_row("Reward API hangs, trickles, 500s, answers garbage")
    row.detail = "data lost = faults that hung past their bound or ended unclear"
    bounded = {"timeout": 1.0, "retries": 1, "backoff": 0.1}
    limit = 2 * 1.0 + 0.1 + 1.5  # two attempts, one backoff, slack for a loaded machine
    cases = [("/hang", RewardAPIError, "did not answer within 1 s \\(2 attempts\\)"),
             ("/trickle", RewardAPIError, "did not answer within 1 s"),
             ("/500", RewardAPIError, "answered HTTP 500 after 2 attempts: internal error: model not loaded"),
             ("/400", RewardAPIError, "answered HTTP 400: bad request"),
             ("/garbage", ValueError, "did not answer JSON"),
             ("/not-utf8", ValueError, "did not answer UTF-8"),
             ("/wrong-shape", ValueError, "expected a list of numbers"),
             ("/nan", ValueError, "non-finite score"),
             ("/huge", ValueError, "more than 16,777,216 bytes")]
    unclear = []
    for path, error, message in cases:
        row.runs += 1
        start = time.monotonic()
        try:
            _score(tokenizer, endpoint + path, **bounded)
            unclear.append(f"{path}: no error")
        except error as err:
            if endpoint + path not in str(err) or not re.search(message, str(err)):
                unclear.append(f"{path}: {err}")
        except Exception as err:  # noqa: BLE001 — any other type is an unclear error, counted
            unclear.append(f"{path}: {type(err).__name__}: {err}")
        if time.monotonic() - start > limit:
            unclear.append(f"{path}: took {time.monotonic() - start:.1f} s")
    # retried only where a retry can help: a 400 and garbage answers are asked once
    assert _Faulty.hits["/hang"] == _Faulty.hits["/500"] == 2
    assert _Faulty.hits["/400"] == _Faulty.hits["/garbage"] == 1
    row.data_lost = len(unclear)
    assert row.data_lost == 0, unclear


def test_transient_faults_are_retried_to_the_right_scores(tokenizer, endpoint: str) -> None:
    start = time.monotonic()
    scores = _score(tokenizer, endpoint + "/flaky", timeout=1.0, retries=2, backoff=0.1)
    assert scores.tolist() == [1.0, 2.0]
    assert _Faulty.hits["/flaky"] == 3  # a 500, a hang cut at 1 s, then the scores
    assert time.monotonic() - start < 1.0 + 0.1 + 0.2 + 2.0
