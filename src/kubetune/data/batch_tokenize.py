"""Tokenise many texts at once, with exactly the ids of `tokenizer.encode(text, add_special_tokens=False)`.

Preprocessing tokenises hundreds of thousands of characters drawn from a few thousand distinct
words. A byte-level BPE tokenizer (GPT-2's scheme, used by SmolLM, GPT-NeoX, StarCoder, ...)
first cuts the text at its added tokens, then cuts each piece into pre-tokens with one fixed
regex, and runs BPE on every pre-token on its own. So a text's ids are the added tokens' ids and
each pre-token's ids, in order: `BatchTokenizer` keeps a memo of ids per pre-token and does the
cutting with Python's `re`, which for such data is several times faster than the Rust
tokenizer's per-text work (it builds offsets and an `Encoding` for every text).

The memo is used only where it is exact:

- the tokenizer is a fast one with no normalizer, a plain `ByteLevel(add_prefix_space=False,
  use_regex=True)` pre-tokenizer, a BPE model without dropout, special tokens not split, and
  added tokens without `lstrip`/`rstrip`/`single_word`;
- the text is ASCII, where the regex's `\\p{L}`, `\\p{N}` and `\\s` have the same meaning in
  Python as in the tokenizer's Oniguruma (other texts go to the tokenizer, in one batch);
- every new pre-token is checked to be one pre-token for the tokenizer too; if one is not, the
  memo is switched off for good and the tokenizer does all the work.

Ids of new pre-tokens come from the tokenizer itself, so the memo never invents a token.
"""

from __future__ import annotations

import logging
import re
from itertools import chain
from typing import Any

logger = logging.getLogger(__name__)

_SPACE = r"\t\n\x0b\x0c\r "  # what Oniguruma's \s matches among ASCII characters
# GPT-2's pre-tokenizer regex (tokenizers' ByteLevel), with its Unicode classes spelt out for ASCII.
# Words come first because they are most of the text; that keeps the matches the same, as no
# word starts with the apostrophe that the contractions start with.
_PRE_TOKEN = re.compile(
    rf" ?[A-Za-z]+|'(?:s|t|re|ve|m|ll|d)| ?[0-9]+| ?[^{_SPACE}A-Za-z0-9]+|[{_SPACE}]+(?![^{_SPACE}])|[{_SPACE}]+"
)

MEMO_LIMIT = 500_000
"""Pre-tokens `BatchTokenizer` remembers (~100 MB) before it starts over."""


class BatchTokenizer:
    """Tokenises lists of texts as `tokenizer.encode(text, add_special_tokens=False)` does, faster.

    Args:
        tokenizer: a Hugging Face tokenizer. Byte-level BPE fast tokenizers get the memo; any
            other tokenizer is simply called once per batch. Its added tokens are read here:
            build a new `BatchTokenizer` after adding tokens.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._splitters: list[re.Pattern[str]] | None = None
        # ids by pre-token, and by added token: a pre-token never equals an added token, since
        # added tokens are cut out of the text before pre-tokenisation
        self._added: dict[str, list[int]] = {}
        if memo_applies(tokenizer):
            self._splitters, added = _added_token_splitters(tokenizer)
            self._added = {content: [token_id] for content, token_id in added.items()}
        self._memo = dict(self._added)

    def __call__(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text (no special tokens added).

        Args:
            texts: the texts.

        Returns:
            One id list per text, in order.
        """
        if self._splitters is None:
            return self._encode(texts)
        out: list[list[int]] = [[] for _ in texts]
        slow: list[int] = []  # texts the memo cannot vouch for: the tokenizer encodes them
        split: list[tuple[int, list[str]]] = []
        for i, text in enumerate(texts):
            if text.isascii():
                parts: list[str] = []
                self._cut(text, 0, parts)
                split.append((i, parts))
            else:
                slow.append(i)
        if not self._learn({part for _, parts in split for part in parts}):
            return self._encode(texts)
        lookup = self._memo.__getitem__
        for i, parts in split:
            out[i] = list(chain.from_iterable(map(lookup, parts)))
        for i, ids in zip(slow, self._encode([texts[i] for i in slow]), strict=True):
            out[i] = ids
        return out

    def _encode(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return [list(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def _cut(self, text: str, level: int, parts: list[str]) -> None:
        """Append the text's added tokens and pre-tokens to `parts`, in order.

        Level k cuts out the added tokens of `_splitters[k]`; below the last level, the rest
        is pre-tokenised.
        """
        if level == len(self._splitters or ()):
            parts += _PRE_TOKEN.findall(text)
            return
        # re.split with one capture group alternates text and matched token
        for k, chunk in enumerate(self._splitters[level].split(text)):  # type: ignore[index]
            if k % 2:
                parts.append(chunk)
            elif chunk:
                self._cut(chunk, level + 1, parts)

    def _learn(self, parts: set[str]) -> bool:
        """Add the ids of unseen pre-tokens to the memo; False (memo off) if the tokenizer disagrees."""
        if len(self._memo) + len(parts) > MEMO_LIMIT:  # data with endless distinct words (numbers, code)
            self._memo = dict(self._added)
        new = sorted(parts.difference(self._memo))
        if not new:
            return True
        pre_tokenizer = self.tokenizer.backend_tokenizer.pre_tokenizer
        if any(len(pre_tokenizer.pre_tokenize_str(word)) != 1 for word in new):
            logger.warning("batch tokenisation: the tokenizer splits text unlike GPT-2's regex; using it directly")
            self._splitters = None
            return False
        self._memo.update(zip(new, self._encode(new), strict=True))
        return True


def memo_applies(tokenizer: Any) -> bool:
    """Whether `tokenizer` is a byte-level BPE tokenizer whose ids the pre-token memo reproduces exactly."""
    from tokenizers import models, pre_tokenizers

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or getattr(tokenizer, "split_special_tokens", False) or backend.normalizer is not None:
        return False
    pre = backend.pre_tokenizer
    if not isinstance(pre, pre_tokenizers.ByteLevel) or pre.add_prefix_space or not pre.use_regex:
        return False
    if not isinstance(backend.model, models.BPE) or backend.model.dropout:
        return False
    added = backend.get_added_tokens_decoder().values()
    return not any(t.lstrip or t.rstrip or t.single_word for t in added)


def _added_token_splitters(tokenizer: Any) -> tuple[list[re.Pattern[str]], dict[str, int]]:
    """Regexes that cut out added tokens as the tokenizer does (un-normalised ones first, then the rest), and their ids.

    Each alternation lists longer tokens first, so at any position the longest token wins, and
    the search finds the leftmost: the tokenizer's leftmost-longest matching.
    """
    decoder = tokenizer.backend_tokenizer.get_added_tokens_decoder()
    splitters: list[re.Pattern[str]] = []
    ids: dict[str, int] = {}
    for normalized in (False, True):
        level = {t.content: i for i, t in sorted(decoder.items()) if t.normalized == normalized and t.content}
        if level:
            alternatives = "|".join(re.escape(c) for c in sorted(level, key=len, reverse=True))
            splitters.append(re.compile(f"({alternatives})"))
            ids.update(level)
    return splitters, ids
