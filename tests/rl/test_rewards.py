"""Reward sources: a Python function, an HTTP endpoint (a real local server), a reward model; score normalisation."""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close
from transformers import AutoModelForCausalLM, AutoTokenizer

from kubetune.model.value_head import ModelWithValueHead
from kubetune.rl.reward_ref import parse_api_reward
from kubetune.rl.rewards import FunctionReward, HttpReward, ModelReward, ScoreNormalizer, load_reward_function


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def encode(tokenizer, texts: list[str]) -> list[list[int]]:
    return [tokenizer.encode(text, add_special_tokens=False) for text in texts]


def test_function_reward_sees_decoded_texts_and_references_when_it_asks(tokenizer) -> None:
    seen = {}

    def with_refs(prompts, responses, references):
        seen.update(prompts=prompts, responses=responses, references=references)
        return [len(r) for r in responses]

    prompts, responses = encode(tokenizer, ["Q: one", "Q: two"]), encode(tokenizer, [" yes", " no way"])
    scores = FunctionReward(with_refs, tokenizer)(prompts, responses, ["r1", "r2"])
    assert_close(scores, torch.tensor([4.0, 7.0]))
    assert seen == {"prompts": ["Q: one", "Q: two"], "responses": [" yes", " no way"], "references": ["r1", "r2"]}
    # a function without a references parameter is called without it
    assert FunctionReward(lambda p, r: [1, 2], tokenizer)(prompts, responses, ["a", "b"]).tolist() == [1.0, 2.0]


def test_function_reward_with_the_wrong_number_of_scores_says_so(tokenizer) -> None:
    with pytest.raises(ValueError, match="returned 1 scores for 2 responses"):
        FunctionReward(lambda p, r: [1.0], tokenizer)(encode(tokenizer, ["a", "b"]), encode(tokenizer, ["c", "d"]),
                                                       ["", ""])


class _Scorer(BaseHTTPRequestHandler):
    requests: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Scorer.requests.append(payload)
        if self.path == "/fail":
            self._answer(400, {"error": "bad input"})
        elif self.path == "/short":
            self._answer(200, {"scores": [1.0]})
        else:
            self._answer(200, {"scores": [float(len(r.split())) for r in payload["responses"]]})

    def _answer(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:  # keep test output quiet
        pass


@pytest.fixture()
def scoring_server() -> Iterator[str]:
    """A JSON scoring endpoint on a free loopback port: score = number of words in the response."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scorer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Scorer.requests = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_http_reward_posts_texts_and_reads_scores(tokenizer, scoring_server: str) -> None:
    prompts, responses = encode(tokenizer, ["Q: a", "Q: b"]), encode(tokenizer, [" one two three", " four"])
    scores = HttpReward(scoring_server + "/score", tokenizer)(prompts, responses, ["x", "y"])
    assert scores.tolist() == [3.0, 1.0]
    payload = _Scorer.requests[-1]
    assert payload["messages"] == payload["texts"] == ["Q: a one two three", "Q: b four"]
    assert payload["responses"] == [" one two three", " four"] and payload["references"] == ["x", "y"]


def test_http_reward_errors_name_the_endpoint(tokenizer, scoring_server: str) -> None:
    ids = encode(tokenizer, ["a", "b"])
    with pytest.raises(RuntimeError, match="answered HTTP 400: .*bad input"):
        HttpReward(scoring_server + "/fail", tokenizer)(ids, ids, ["", ""])
    with pytest.raises(ValueError, match="returned 1 scores for 2 responses"):
        HttpReward(scoring_server + "/short", tokenizer)(ids, ids, ["", ""])
    with socket.socket() as s:  # a port nobody listens on any more
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(RuntimeError, match="unreachable"):
        HttpReward(f"http://127.0.0.1:{closed}/x", tokenizer, timeout=2, retries=0)(ids, ids, ["", ""])


def test_model_reward_is_the_value_at_each_sequences_last_token(tiny_model_dir: Path, tokenizer) -> None:
    torch.manual_seed(0)
    model = ModelWithValueHead(AutoModelForCausalLM.from_pretrained(tiny_model_dir)).eval()
    prompts, responses = encode(tokenizer, ["short", "a much longer prompt here"]), encode(tokenizer, [" a b c", " d"])
    scores = ModelReward(model, tokenizer.pad_token_id)(prompts, responses, ["", ""])
    for i in range(2):
        ids = torch.tensor([prompts[i] + responses[i]])
        with torch.no_grad():
            _, values = model(ids, torch.ones_like(ids))
        assert_close(scores[i], values[0, -1], atol=1e-5, rtol=0)


def test_api_references_parse_into_urls_files_and_modules() -> None:
    assert parse_api_reward("https://rm.internal/score").kind == "http"
    assert parse_api_reward("rules/reward.py") == parse_api_reward("rules/reward.py:reward_func")
    assert parse_api_reward("rules/reward.py:length").function == "length"
    ref = parse_api_reward("my_pkg.rewards:score")
    assert (ref.kind, ref.target, ref.function) == ("module", "my_pkg.rewards", "score")
    with pytest.raises(ValueError):
        parse_api_reward("not a reference")


def test_reward_functions_load_from_a_file_and_a_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "rules.py").write_text("def reward_func(p, r):\n    return [1.0] * len(r)\n"
                                       "def other(p, r):\n    return [2.0] * len(r)\n")
    assert load_reward_function(parse_api_reward(str(tmp_path / "rules.py")))([], ["x"]) == [1.0]
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_reward_function(parse_api_reward("rules:other"))([], ["x"]) == [2.0]
    sys.modules.pop("rules", None)
    with pytest.raises(AttributeError, match="no function 'missing'"):
        load_reward_function(parse_api_reward(f"{tmp_path / 'rules.py'}:missing"))


def test_score_normaliser_tracks_the_running_mean_and_std() -> None:
    norm = ScoreNormalizer()
    batches = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, -4.0]), torch.tensor([0.5, 0.5, 7.0, 2.0])]
    seen = []
    for batch in batches:
        out = norm(batch)
        seen.append(batch)
        everything = torch.cat(seen).double()
        assert norm.mean == pytest.approx(everything.mean().item())
        assert norm.std == pytest.approx(everything.std().item())
        assert_close(out, ((batch - everything.mean()) / everything.std()).float(), atol=1e-5, rtol=0)
    copy = ScoreNormalizer()
    copy.load_state_dict(json.loads(json.dumps(norm.state_dict())))
    assert_close(copy(torch.tensor([3.0, 4.0])), norm(torch.tensor([3.0, 4.0])))


def test_a_reward_model_scores_a_response_ending_as_it_was_trained_to(tiny_model_dir: Path, tokenizer) -> None:
    """chatml ends an answer with `<|im_end|>` and a newline; generation stops at `<|im_end|>`. The rm stage
    reads its score at the newline, so a response is scored with the template's ending, not where it stopped."""
    from kubetune.data.template_registry import get_template
    from kubetune.rl.rewards import answer_ending

    template = get_template("chatml", tokenizer)
    stops = template.stop_token_ids(tokenizer)
    end = answer_ending(template, tokenizer)
    assert [tokenizer.decode([t]) for t in end] == ["<|im_end|>", "\n"]
    torch.manual_seed(0)
    model = ModelWithValueHead(AutoModelForCausalLM.from_pretrained(tiny_model_dir)).eval()
    reward = ModelReward(model, tokenizer.pad_token_id, end, stops)
    conversation = [{"role": "user", "content": "Spell Sven in capitals."}, {"role": "assistant", "content": "SVEN."}]
    prompt, trained = template.encode_oneturn(tokenizer, conversation)  # how the rm stage saw this answer
    text = tokenizer.encode("SVEN.", add_special_tokens=False)
    stopped, truncated = text + [stops[0]], text  # ended by its stop token; out of max_new_tokens
    scores = reward([prompt, prompt], [stopped, truncated], ["", ""])
    ids = torch.tensor([prompt + trained])
    with torch.no_grad():
        _, values = model(ids, torch.ones_like(ids))
    assert_close(scores, values[0, -1].repeat(2), atol=1e-5, rtol=0)
    as_generated = ModelReward(model, tokenizer.pad_token_id)([prompt], [stopped], [""])
    assert abs(float(as_generated[0]) - float(values[0, -1])) > 1e-3  # read one token early: another number
