"""Evaluation: generation metrics (BLEU-4, ROUGE, exact match) and perplexity."""

from kubetune.evaluate.metrics import bleu4, generation_metrics, perplexity, rouge_f, segment

__all__ = ["bleu4", "generation_metrics", "perplexity", "rouge_f", "segment"]
