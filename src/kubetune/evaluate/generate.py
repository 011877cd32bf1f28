"""Generate answers for held-out prompts and score them against the references (BLEU-4, ROUGE)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from kubetune.config import GeneratingArguments
from kubetune.data.encode import IGNORE_INDEX
from kubetune.evaluate.metrics import generation_metrics


def generation_kwargs(gen: GeneratingArguments, tokenizer: Any, stop_token_ids: list[int] | None = None
                      ) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "do_sample": gen.do_sample,
        "num_beams": gen.num_beams,
        "max_new_tokens": gen.max_new_tokens,
        "repetition_penalty": gen.repetition_penalty,
        "length_penalty": gen.length_penalty,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": sorted({tokenizer.eos_token_id, *(stop_token_ids or [])} - {None}),
    }
    if gen.do_sample:  # passing sampling knobs to greedy decoding only earns warnings
        kwargs.update(temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k)
    return kwargs


@torch.no_grad()
def generate(model: Any, tokenizer: Any, prompts: list[list[int]], gen: GeneratingArguments,
             batch_size: int = 8, desc: str = "predict", stop_token_ids: list[int] | None = None) -> list[str]:
    """Left-pad prompts in batches of `batch_size`, generate with the KV cache, and decode only the new tokens."""
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    kwargs = generation_kwargs(gen, tokenizer, stop_token_ids)
    # longest first keeps batches tight (less padding); results are put back in input order
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    decoded: dict[int, str] = {}
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch"):
        idx = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in idx)
        input_ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in idx], device=device)
        mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in idx], device=device)
        # use_cache: a checkpoint's generation_config may say false (and training turns it off in the model's
        # config); without it every new token re-reads the whole sequence
        generated = model.generate(input_ids=input_ids, attention_mask=mask, use_cache=True, **kwargs)
        for row, i in enumerate(idx):
            decoded[i] = tokenizer.decode(generated[row, width:], skip_special_tokens=gen.skip_special_tokens).strip()
    outputs = [decoded[i] for i in range(len(prompts))]
    return outputs


def predict(model: Any, tokenizer: Any, rows: Any, gen: GeneratingArguments, *, batch_size: int,
            output_file: Path, stop_token_ids: list[int] | None = None) -> dict[str, float]:
    """Generate for every eval row, write `generated_predictions.jsonl`, return BLEU/ROUGE metrics.

    Args:
        rows: eval split with `prompt_ids` and `reference` columns.
        output_file: one JSON line per row: prompt, predict, label.
    """
    prompts = list(rows["prompt_ids"])
    references = list(rows["reference"])
    predictions = generate(model, tokenizer, prompts, gen, batch_size=batch_size, stop_token_ids=stop_token_ids)
    with output_file.open("w", encoding="utf-8") as f:
        for prompt, pred, label in zip(prompts, predictions, references, strict=True):
            prompt_text = tokenizer.decode(prompt, skip_special_tokens=False)
            f.write(json.dumps({"prompt": prompt_text, "predict": pred, "label": label}, ensure_ascii=False) + "\n")
    return {f"predict_{k}": v for k, v in generation_metrics(predictions, references).items()}


def split_prompt(input_ids: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
    """(prompt, response) of an encoded row: the prompt is the unlabelled prefix, the response the rest."""
    start = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
    return list(input_ids[:start]), list(input_ids[start:])


def predict_preferred(model: Any, tokenizer: Any, rows: list[tuple[list, list]], gen: GeneratingArguments, *,
                      batch_size: int, output_file: Path, stop_token_ids: list[int] | None = None
                      ) -> dict[str, float]:
    """Generate for the prompts of held-out preference rows and score against the preferred response.

    Args:
        rows: (input_ids, labels) of the preferred responses (dpo: chosen; kto: desirable rows).
        batch_size, output_file, stop_token_ids: as `predict`.
    """
    prompts, references = [], []
    for ids, labels in rows:
        prompt, response = split_prompt(ids, labels)
        prompts.append(prompt)
        references.append(tokenizer.decode(response, skip_special_tokens=True).strip())
    return predict(model, tokenizer, {"prompt_ids": prompts, "reference": references}, gen, batch_size=batch_size,
                   output_file=output_file, stop_token_ids=stop_token_ids)
