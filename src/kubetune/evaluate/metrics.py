"""Text-generation metrics: BLEU-4, ROUGE-1/2/L, exact match, and perplexity from a mean loss.

BLEU and ROUGE are computed on jieba word segments, as LLaMA-Factory's `ComputeSimilarity` does for
ROUGE, so Chinese text (no spaces) is scored by words rather than as one token per sentence. For
English, jieba splits on spaces and punctuation; whitespace segments are dropped.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence

import jieba
from rouge_chinese import Rouge

# jieba prints "Building prefix dict ..." at DEBUG level to stderr on first use; keep logs quiet.
jieba.setLogLevel(logging.WARNING)

ROUGE_KEYS = ("rouge-1", "rouge-2", "rouge-l")
# what `generation_metrics` returns (the predict_ metrics of a stage)
GENERATION_METRICS = ("bleu-4", *ROUGE_KEYS, "exact_match")
_BLEU_WEIGHTS = (0.25, 0.25, 0.25, 0.25)


def segment(text: str) -> list[str]:
    """Split `text` into jieba word segments, dropping whitespace-only ones.

    Args:
        text (`str`):
            Any text; Chinese is segmented into words, other scripts on spaces and punctuation.
    """
    return [token for token in jieba.cut(text) if token.strip()]


def bleu4(prediction: list[str], reference: list[str]) -> float:
    """Sentence BLEU-4 in [0, 1]: uniform 1–4-gram weights, smoothing method 3 (NIST geometric).

    Args:
        prediction (`list[str]`):
            Tokens of the generated text.
        reference (`list[str]`):
            Tokens of the single reference.

    Returns:
        `float`: 0 when either side is empty. Texts shorter than 4 tokens score below 1 even when
        identical, since they have no 4-grams to match.
    """
    if not prediction or not reference:
        return 0.0
    # imported here: nltk pulls in scipy.stats (1-2 s), and every stage process imports this module
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    with warnings.catch_warnings():
        # nltk warns about every missing n-gram order; smoothing already accounts for them.
        warnings.simplefilter("ignore")
        score = sentence_bleu(
            [reference], prediction, weights=_BLEU_WEIGHTS, smoothing_function=SmoothingFunction().method3
        )
    return float(score)


def rouge_f(prediction: list[str], reference: list[str]) -> dict[str, float]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F-scores in [0, 1] with rouge-chinese's defaults.

    rouge-chinese counts distinct n-grams (`exclusive=True`), like LLaMA-Factory's numbers.

    Args:
        prediction (`list[str]`):
            Tokens of the generated text.
        reference (`list[str]`):
            Tokens of the reference.

    Returns:
        `dict[str, float]`: `rouge-1`, `rouge-2`, `rouge-l`; all 0 when either side is empty
        (rouge-chinese raises on empty text).
    """
    if not prediction or not reference:
        return dict.fromkeys(ROUGE_KEYS, 0.0)
    scores = Rouge().get_scores(" ".join(prediction), " ".join(reference))[0]
    return {key: float(scores[key]["f"]) for key in ROUGE_KEYS}


def generation_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus scores for generated texts against one reference each, averaged over examples.

    Args:
        predictions (`Sequence[str]`):
            Generated texts (prompt removed, special tokens decoded away).
        references (`Sequence[str]`):
            The expected texts, aligned with `predictions`.

    Returns:
        `dict[str, float]`: `bleu-4`, `rouge-1`, `rouge-2`, `rouge-l`, `exact_match`, each a mean
        over examples in [0, 100], rounded to 4 decimals. An empty prediction or reference scores 0
        on BLEU/ROUGE; `exact_match` compares the stripped strings.

    Raises:
        ValueError: if the lists differ in length or are empty.
    """
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions but {len(references)} references: they must be aligned"
        )
    if not predictions:
        raise ValueError("no predictions to score: the evaluation set is empty")
    totals = dict.fromkeys(GENERATION_METRICS, 0.0)
    for prediction, reference in zip(predictions, references, strict=True):
        pred_tokens, ref_tokens = segment(prediction), segment(reference)
        totals["bleu-4"] += bleu4(pred_tokens, ref_tokens)
        for key, value in rouge_f(pred_tokens, ref_tokens).items():
            totals[key] += value
        totals["exact_match"] += float(prediction.strip() == reference.strip())
    # rouge-chinese adds 1e-8 to F-score denominators; rounding makes identical texts exactly 100.
    return {key: round(100.0 * total / len(predictions), 4) for key, total in totals.items()}


def perplexity(mean_loss: float) -> float:
    """`exp(mean_loss)`, the perplexity of a mean token cross-entropy (in nats).

    Args:
        mean_loss (`float`):
            Mean negative log-likelihood per token, e.g. the Trainer's `eval_loss`.

    Returns:
        `float`: `inf` where `exp` overflows (a diverged run), `nan` for a `nan` loss.
    """
    try:
        return math.exp(mean_loss)
    except OverflowError:
        return math.inf
