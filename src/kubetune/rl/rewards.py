"""Where PPO's scores come from: a reward model, an HTTP scoring endpoint, or a Python function.

Every source is called the same way — token ids of the prompts and of the responses (each response
cut after its first stop token), plus the dataset's reference answers — and returns one float32
score per response, on the CPU:

    scores = source(prompt_ids, response_ids, references)

Text-based sources (HTTP, Python) see the prompt as the chat-formatted text the policy saw and the
response decoded without special tokens.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import logging
import math
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from kubetune.config import FinetuningArguments, ModelArguments
from kubetune.rl.reward_ref import RewardRef, parse_api_reward

logger = logging.getLogger(__name__)

RewardFunction = Callable[..., Sequence[float]]


class RewardSource(Protocol):
    def __call__(self, prompt_ids: list[list[int]], response_ids: list[list[int]],
                 references: list[str]) -> torch.Tensor:
        """One float32 score per response, shape `[batch]`, on the CPU."""
        ...


class ModelReward:
    """Score with a reward model: its value head at the last token of prompt + response, the response ending as the
    reward model was trained to read it.

    The rm stage trains on answers written out by the chat template, which ends an assistant turn with more than
    the stop token generation halts at (chatml: `<|im_end|>` then a newline), and reads the score at the very
    last token. A response cut at its stop token therefore gets the rest of that ending (`answer_end`) before
    it is scored — else the score is read at a position the reward model never learnt to score. A response that
    ran out of `max_new_tokens` gets the whole ending: it is scored as the answer it is.

    Args:
        model: a `ModelWithValueHead` (from `kubetune.model.reward.load_reward_model`), in eval mode.
        pad_token_id: the id used to right-pad the batch (masked out).
        answer_end: the ids the template writes after an answer's text, from its stop token on (`answer_ending`);
            empty: score the response as generated.
        stop_token_ids: the ids generation stops at (a response ending in one has it replaced by `answer_end`).
    """

    def __init__(self, model: Any, pad_token_id: int, answer_end: list[int] | None = None,
                 stop_token_ids: list[int] | None = None) -> None:
        self.model = model
        self.pad_token_id = pad_token_id
        self.answer_end = list(answer_end or [])
        self.stops = set(stop_token_ids or [])

    def as_trained(self, response: list[int]) -> list[int]:
        """The response with the template's ending, as the reward model saw answers in training."""
        if not self.answer_end:
            return list(response)
        if response and response[-1] in self.stops:
            response = response[:-1]
        return list(response) + self.answer_end

    @torch.no_grad()
    def __call__(self, prompt_ids: list[list[int]], response_ids: list[list[int]],
                 references: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        sequences = [list(p) + self.as_trained(list(r)) for p, r in zip(prompt_ids, response_ids, strict=True)]
        width = max(len(s) for s in sequences)
        ids = torch.tensor([s + [self.pad_token_id] * (width - len(s)) for s in sequences], device=device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences], device=device)
        return self.model.score(ids, mask).float().cpu()


def answer_ending(template: Any, tokenizer: Any) -> list[int]:
    """The ids `template` writes after an assistant answer's text, from its first stop token on (chatml:
    `<|im_end|>`, newline); [] for a template whose answers carry no stop token."""
    stops = set(template.stop_token_ids(tokenizer))
    _, answer = template.encode_oneturn(tokenizer, [{"role": "user", "content": "?"},
                                                    {"role": "assistant", "content": "Yes."}])
    first = next((i for i, token in enumerate(answer) if token in stops), None)
    return [] if first is None else answer[first:]


class _TextReward:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def texts(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> tuple[list[str], list[str]]:
        prompts = self.tokenizer.batch_decode(prompt_ids, skip_special_tokens=False)
        responses = self.tokenizer.batch_decode(response_ids, skip_special_tokens=True)
        return prompts, responses


class FunctionReward(_TextReward):
    """Score with a Python function: `fn(prompts, responses[, references=...]) -> list[float]`.

    For rule-based rewards and tests. `references` (the dataset's answers) is passed only when the
    function accepts it (or `**kwargs`).

    Args:
        fn: the scoring function.
        tokenizer: decodes the ids into the texts the function sees.
    """

    def __init__(self, fn: RewardFunction, tokenizer: Any) -> None:
        super().__init__(tokenizer)
        self.fn = fn
        params = inspect.signature(fn).parameters
        self.takes_references = "references" in params or any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())

    def __call__(self, prompt_ids: list[list[int]], response_ids: list[list[int]],
                 references: list[str]) -> torch.Tensor:
        prompts, responses = self.texts(prompt_ids, response_ids)
        kwargs = {"references": references} if self.takes_references else {}
        scores = self.fn(prompts, responses, **kwargs)
        return _as_scores(scores, len(responses), f"reward function {getattr(self.fn, '__name__', self.fn)!r}")


class RewardAPIError(RuntimeError):
    """The scoring endpoint failed for good: unreachable, too slow, an HTTP error, or an answer that is not scores."""


class HttpReward(_TextReward):
    """Score with an HTTP endpoint (`reward_model_type: api`).

    Sends `POST <url>` with JSON `{"messages": [...], "texts": [...], "prompts": [...], "responses": [...],
    "references": [...]}` — `messages` and `texts` are the same full prompt+response strings
    (`messages` is what servers written for LLaMA-Factory read) — and expects `{"scores": [float, ...]}`,
    one per text.

    Every attempt has a wall-clock bound (`timeout`), whatever the server does: one that accepts the
    connection and never answers, or trickles its answer a byte at a time, is abandoned at the deadline
    (socket timeouts alone bound each read, not the answer). Connection errors, timeouts, 5xx and 429
    answers are retried with backoff; other HTTP errors and answers that are not scores (not JSON, not
    UTF-8, over `MAX_ANSWER_BYTES`, the wrong count, non-finite) fail at once: retrying would not fix them.

    Args:
        url: the endpoint.
        tokenizer: decodes the ids into texts.
        timeout: seconds one attempt may take in all, connecting to the last byte (default 60).
        retries: further attempts after a retryable failure (default 2, 1 s and 2 s apart).
        backoff: seconds before the first retry, doubling after each (default 1).
    """

    MAX_ANSWER_BYTES = 16 << 20  # scores for a batch are a few kB; a server streaming more is broken

    def __init__(self, url: str, tokenizer: Any, timeout: float = 60.0, retries: int = 2,
                 backoff: float = 1.0) -> None:
        super().__init__(tokenizer)
        self.url, self.timeout, self.retries, self.backoff = url, timeout, retries, backoff

    def __call__(self, prompt_ids: list[list[int]], response_ids: list[list[int]],
                 references: list[str]) -> torch.Tensor:
        prompts, responses = self.texts(prompt_ids, response_ids)
        full = self.tokenizer.batch_decode([list(p) + list(r) for p, r in zip(prompt_ids, response_ids, strict=True)],
                                           skip_special_tokens=False)
        payload = {"messages": full, "texts": full, "prompts": prompts, "responses": responses,
                   "references": references}
        answer = self._post(json.dumps(payload).encode())
        if not isinstance(answer, dict) or "scores" not in answer:
            raise ValueError(f"reward API {self.url} answered {str(answer)[:200]!r}: expected a JSON object "
                             '{"scores": [float, ...]}')
        return _as_scores(answer["scores"], len(full), f"reward API {self.url}")

    def _post(self, body: bytes) -> Any:
        attempts = self.retries + 1
        for attempt in range(attempts):
            try:
                raw = _within(self.timeout, lambda: self._post_once(body))
            except urllib.error.HTTPError as err:
                detail = getattr(err, "detail", "")
                if (err.code < 500 and err.code != 429) or attempt == self.retries:
                    raise RewardAPIError(f"reward API {self.url} answered HTTP {err.code}"
                                         f"{f' after {attempts} attempts' if attempt else ''}: {detail}") from None
                failure = f"HTTP {err.code}"
            except TimeoutError:
                if attempt == self.retries:
                    raise RewardAPIError(f"reward API {self.url} did not answer within {self.timeout:g} s "
                                         f"({attempts} attempts): is the scoring server overloaded or stuck? Each "
                                         f"attempt is bounded by HttpReward's timeout") from None
                failure = f"no answer within {self.timeout:g} s"
            except (urllib.error.URLError, ConnectionError, OSError) as err:
                if attempt == self.retries:
                    raise RewardAPIError(f"reward API {self.url} is unreachable ({err}; {attempts} attempts): is "
                                         "the scoring server running, and is reward_model the right URL?") from None
                failure = str(err)
            else:
                return self._parse(raw)
            wait = self.backoff * 2**attempt
            logger.warning("reward API %s failed (%s; attempt %d/%d); retrying in %g s", self.url, failure,
                           attempt + 1, attempts, wait)
            time.sleep(wait)
        raise AssertionError("unreachable")

    def _post_once(self, body: bytes) -> bytes:
        request = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read(self.MAX_ANSWER_BYTES + 1)  # one byte over the bound: an answer too large
        except urllib.error.HTTPError as err:
            err.detail = _read_detail(err)  # type: ignore[attr-defined] — read here, within the deadline
            raise

    def _parse(self, raw: bytes) -> Any:
        if len(raw) > self.MAX_ANSWER_BYTES:
            raise ValueError(f"reward API {self.url} answered more than {self.MAX_ANSWER_BYTES:,} bytes: expected "
                             '{"scores": [float, ...]}')
        try:
            return json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise ValueError(f"reward API {self.url} did not answer UTF-8 text ({err})") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"reward API {self.url} did not answer JSON ({err}): {raw[:200]!r}") from None


def _read_detail(err: urllib.error.HTTPError) -> str:
    try:
        return err.read(300).decode("utf-8", "replace")
    except (OSError, TimeoutError):
        return "(no body)"


def _within(seconds: float, call: Callable[[], bytes]) -> bytes:
    """`call()`, or TimeoutError once `seconds` have passed, whatever `call` is blocked on.

    The call runs in a daemon thread: a server that trickles bytes keeps each socket read under its
    timeout forever, so only a wall clock bounds the attempt. An abandoned thread ends when its socket
    does (at the latest after one more socket timeout per read) and never holds up the process's exit.
    """
    outcome: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=1)

    def run() -> None:
        try:
            outcome.put((True, call()))
        except BaseException as err:  # noqa: BLE001 — handed to the caller's thread as it is
            outcome.put((False, err))

    threading.Thread(target=run, daemon=True, name="reward-api").start()
    try:
        ok, value = outcome.get(timeout=seconds)
    except queue.Empty:
        raise TimeoutError(f"no answer within {seconds:g} s") from None
    if not ok:
        raise value
    return value


def _as_scores(scores: Any, expected: int, who: str) -> torch.Tensor:
    try:
        if isinstance(scores, str | bytes | dict) or any(isinstance(s, bool | str) for s in scores):
            raise TypeError  # `float("3")` and `float(True)` would pass: a score is a JSON number
        values = [float(s) for s in scores]
    except (TypeError, ValueError):
        raise ValueError(f"{who} returned {str(scores)[:200]!r}: expected a list of numbers") from None
    if len(values) != expected:
        raise ValueError(f"{who} returned {len(values)} scores for {expected} responses")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{who} returned a non-finite score: {values}")
    return torch.tensor(values, dtype=torch.float32)


def load_reward_function(ref: RewardRef) -> RewardFunction:
    """Import the function a `file.py[:function]` or `module:function` reference names."""
    if ref.kind == "file":
        path = Path(ref.target)
        if not path.is_file():
            raise FileNotFoundError(f"reward_model: {path} not found")
        spec = importlib.util.spec_from_file_location(f"kubetune_reward_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(ref.target)
    fn = getattr(module, ref.function, None)
    if not callable(fn):
        raise AttributeError(f"reward_model: {ref.target} defines no function {ref.function!r}")
    return fn


def load_reward_source(method: FinetuningArguments, model_args: ModelArguments, tokenizer: Any,
                       device: torch.device, template: Any | None = None) -> RewardSource:
    """Build the reward source a config names (`reward_model`, `reward_model_type`).

    Args:
        method: for `reward_model`, `reward_model_type` and `reward_model_quantization_bit`.
        model_args: the policy's base model (a LoRA reward model is an adapter on the same base).
        tokenizer: the policy's tokenizer (the reward model shares it).
        device: where a reward model runs.
        template: the chat template the reward model was trained with (the stage's); a reward model then scores
            each response with the template's answer ending (`ModelReward`). None: as generated.
    """
    assert method.reward_model, "reward_model is required (checked by the config rules)"
    if method.reward_model_type == "api":
        ref = parse_api_reward(method.reward_model)
        if ref.kind == "http":
            return HttpReward(ref.target, tokenizer)
        return FunctionReward(load_reward_function(ref), tokenizer)

    from kubetune.model.reward import load_reward_model

    # the reward model is its own adapter (or full model) on the base: not the policy's SFT adapter
    base = model_args.model_copy(update={"adapter_name_or_path": None, "quantization_bit": None})
    quantized = method.reward_model_quantization_bit is not None
    model = load_reward_model(method.reward_model, base_model_args=base, reward_model_type=method.reward_model_type,
                              quantization_bit=method.reward_model_quantization_bit,
                              device=None if quantized else device)  # a quantised model is placed as it loads
    if template is None:
        return ModelReward(model, tokenizer.pad_token_id)
    return ModelReward(model, tokenizer.pad_token_id, answer_ending(template, tokenizer),
                       template.stop_token_ids(tokenizer))


class ScoreNormalizer:
    """Running mean and standard deviation of the scores (`ppo_score_norm`), as TRL's `RunningMoments`.

    Each batch first updates the running moments (Chan et al.'s parallel algorithm), then is
    standardised with them, so the scale of the reward model stops mattering and the value head
    sees targets of unit size. The state is saved in checkpoints.
    """

    def __init__(self) -> None:
        self.mean, self.var, self.std, self.count = 0.0, 1.0, 1.0, 0

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        self.update(scores)
        return (scores - self.mean) / (self.std + 1e-8)

    def update(self, scores: torch.Tensor) -> None:
        values = scores.double()
        n = values.numel()
        batch_mean = values.mean().item()
        batch_var = values.var(unbiased=False).item() if n > 1 else 0.0
        total = self.count + n
        delta = batch_mean - self.mean
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.var = m2 / total
        self.std = math.sqrt(self.var * total / (total - 1)) if total > 1 else 1.0
        self.count = total

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "std": self.std, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.var, self.std = float(state["mean"]), float(state["var"]), float(state["std"])
        self.count = int(state["count"])
