"""Pairwise judging: does a judge prefer the candidate's answers to the baseline's? A win rate with its interval.

Each prompt is judged twice, once with the candidate's answer shown first and once with it second, so a judge
that favours a position cancels out: a prompt scores 1 when the candidate wins both orders, 0 when the baseline
does, and 0.5 when the verdicts split (or the judge gives none). The win rate is the mean score; its 95%
interval is a seeded percentile bootstrap over prompts (the scores take three values, so no normal formula).

Judges:
- `EndpointJudge`: an OpenAI-compatible chat-completions endpoint (`judge_model: https://...`), its key from an
  environment variable (a Kubernetes Secret in the cluster); bounded timeouts and retries.
- `LocalJudge`: a local causal LM (`judge_model: <path>`): the verdict is whichever of the letters A and B has the
  higher next-token logit after the judging prompt (no sampling, so it is deterministic).
"""

from __future__ import annotations

import json
import logging
import random
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

logger = logging.getLogger(__name__)

JUDGE_PROMPT = (
    "You compare two answers to the same question. Reply with one letter: A if answer A is better, B if answer B "
    "is better.\n\nQuestion:\n{prompt}\n\nAnswer A:\n{first}\n\nAnswer B:\n{second}\n\nThe better answer is"
)


class Judge(Protocol):
    def verdict(self, prompt: str, first: str, second: str) -> str | None:
        """"A" (the first answer is better), "B", or None (no verdict)."""


class JudgeError(RuntimeError):
    """The judge could not be asked: the message names the endpoint and what happened."""


@dataclass(frozen=True)
class JudgeResult:
    """A pairwise comparison's outcome: `win_rate` of the candidate in [0, 1], with its 95% interval."""

    win_rate: float
    ci_low: float
    ci_high: float
    wins: int
    losses: int
    ties: int
    n: int

    def as_metrics(self, prefix: str = "judge") -> dict[str, float]:
        return {f"{prefix}/win_rate": self.win_rate, f"{prefix}/win_rate_ci_low": self.ci_low,
                f"{prefix}/win_rate_ci_high": self.ci_high, f"{prefix}/wins": float(self.wins),
                f"{prefix}/losses": float(self.losses), f"{prefix}/ties": float(self.ties)}


def compare(judge: Judge, prompts: Sequence[str], candidate: Sequence[str], baseline: Sequence[str], *,
            seed: int = 0, resamples: int = 2000) -> JudgeResult:
    """Judge every prompt in both orders and summarise (see the module docstring)."""
    if not (len(prompts) == len(candidate) == len(baseline)) or not prompts:
        raise ValueError(f"compare needs as many candidate and baseline answers as prompts, and at least one: got "
                         f"{len(prompts)} prompts, {len(candidate)} and {len(baseline)} answers")
    scores = []
    for prompt, ours, theirs in zip(prompts, candidate, baseline, strict=True):
        first = judge.verdict(prompt, ours, theirs)  # the candidate shown as A
        second = judge.verdict(prompt, theirs, ours)  # ... and as B
        votes = [first == "A", second == "B"]
        against = [first == "B", second == "A"]
        scores.append(1.0 if all(votes) else 0.0 if all(against) else 0.5)
    low, high = bootstrap_interval(scores, seed=seed, resamples=resamples)
    return JudgeResult(sum(scores) / len(scores), low, high, scores.count(1.0), scores.count(0.0),
                       scores.count(0.5), len(scores))


def bootstrap_interval(scores: Sequence[float], *, seed: int, resamples: int, level: float = 0.95
                       ) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of `scores` (seeded: the same scores give the same interval)."""
    rng = random.Random(seed)
    n = len(scores)
    means = sorted(sum(rng.choice(scores) for _ in range(n)) / n for _ in range(resamples))
    tail = (1 - level) / 2
    return means[int(tail * (resamples - 1))], means[int((1 - tail) * (resamples - 1))]


def parse_verdict(text: str) -> str | None:
    """The first standalone A or B in a judge's reply ("B", "Answer B.", "**A**"), else None."""
    for token in text.replace("*", " ").replace(".", " ").replace(":", " ").split():
        if token in ("A", "B"):
            return token
    return None


class EndpointJudge:
    """An OpenAI-compatible `/chat/completions` endpoint as the judge.

    Args:
        url: the endpoint's base URL (`https://host/v1`) or its full `/chat/completions` URL.
        model: the model name the endpoint serves.
        api_key: the bearer token ("" for none); never logged.
        timeout: seconds per request.
        retries: further attempts after a failed one (timeouts, connection errors, 5xx), with a doubling pause.
    """

    def __init__(self, url: str, model: str, api_key: str = "", timeout: float = 30.0, retries: int = 2,
                 backoff: float = 1.0) -> None:
        self.url = url if url.rstrip("/").endswith("/chat/completions") else url.rstrip("/") + "/chat/completions"
        self.model, self.timeout, self.retries, self.backoff = model, timeout, retries, backoff
        self._api_key = api_key

    def verdict(self, prompt: str, first: str, second: str) -> str | None:
        body = {"model": self.model, "temperature": 0, "max_tokens": 4,
                "messages": [{"role": "user", "content": JUDGE_PROMPT.format(prompt=prompt, first=first,
                                                                             second=second)}]}
        reply = self._post(body)
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as err:
            raise JudgeError(f"judge {self.url}: the reply is not a chat completion ({str(reply)[:200]})") from err
        return parse_verdict(str(content))

    def _post(self, body: dict[str, Any]) -> Any:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as err:
                problem = f"HTTP {err.code}"
                if err.code < 500 and err.code != 429:  # a bad request or key: retrying changes nothing
                    break
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                problem = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
            except json.JSONDecodeError as err:
                problem = f"a reply that is not JSON ({err})"
        raise JudgeError(f"judge {self.url}: {problem} after {attempt + 1} attempt(s) (timeout {self.timeout:g} s "
                         f"each); check the URL, the key and the endpoint's health")


class LocalJudge:
    """A local causal LM as the judge: A or B by the higher next-token logit after the judging prompt.

    Args:
        model: a loaded causal LM.
        tokenizer: its tokenizer; its chat template wraps the prompt when it has one.
    """

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer
        self._letters = [tokenizer.encode(letter, add_special_tokens=False)[-1] for letter in ("A", "B")]

    def verdict(self, prompt: str, first: str, second: str) -> str | None:
        import torch

        text = JUDGE_PROMPT.format(prompt=prompt, first=first, second=second)
        if getattr(self.tokenizer, "chat_template", None):
            ids = self.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                     tokenize=True, return_dict=False)
        else:
            ids = self.tokenizer.encode(text)
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([list(ids)], device=device)).logits[0, -1]
        a, b = (float(logits[i]) for i in self._letters)
        return None if a == b else "A" if a > b else "B"
