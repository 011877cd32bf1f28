"""Multiple-choice benchmarks (MMLU's layout) with LLaMA-Factory's `eval` semantics: `kubetune eval cfg.yaml` with
`task` set.

For each question the prompt is a conversation in the model's chat template: `n_shot` solved examples from the
subject's dev split as user/assistant turns, then the question as the last user turn. Each turn reads
`question`, then one line per choice (`\\nA. ...`), then the answer cue (`\\nAnswer:`; `lang: zh` writes
`\\n答案：`), and the first turn opens with the subject's instruction ("The following are multiple choice
questions (with answers) about <subject>.\\n\\n"). The answer is the choice letter whose token has the highest
next-token logit after the prompt (the assistant header included), as LLaMA-Factory scores it.

Where kubetune differs: the few-shot examples are the subject's first `n_shot` dev rows (MMLU's own rule, the
same for every question and every run); LLaMA-Factory draws a random support set for each question.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from kubetune.config import RunConfig
from kubetune.evaluate.benchmark_data import Question, Subject, read_benchmark

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptLayout:
    """How one language writes a question: the subject instruction, a choice line, the answer cue."""

    instruction: str
    choice: str
    answer: str


LAYOUTS = {
    "en": PromptLayout("The following are multiple choice questions (with answers) about {subject}.\n\n",
                       "\n{letter}. {text}", "\nAnswer:"),
    "zh": PromptLayout("以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n",
                       "\n{letter}. {text}", "\n答案："),
}


def question_text(question: Question, layout: PromptLayout) -> str:
    """The user turn of one question: the question, its lettered choices, the answer cue."""
    choices = "".join(layout.choice.format(letter=letter, text=text)
                      for letter, text in zip(question.letters, question.choices, strict=True))
    return question.question + choices + layout.answer


def conversation(question: Question, shots: list[Question], subject_name: str, layout: PromptLayout
                 ) -> list[dict[str, str]]:
    """The messages of one question: the solved shots, then the question (its answer as the last turn)."""
    messages = []
    for item in [*shots, question]:
        messages += [{"role": "user", "content": question_text(item, layout)},
                     {"role": "assistant", "content": item.answer}]
    messages[0]["content"] = layout.instruction.format(subject=subject_name) + messages[0]["content"]
    return messages


def choice_token_ids(tokenizer: Any, letters: str) -> list[int]:
    """The token of each letter as the model would write it (the last token of the letter's encoding)."""
    return [tokenizer.encode(letter, add_special_tokens=False)[-1] for letter in letters]


@torch.inference_mode()
def choose(model: Any, prompts: list[list[int]], choice_ids: list[int], pad_id: int, batch_size: int) -> list[int]:
    """The index of the highest-logit choice after each prompt (right-padded batches)."""
    device = next(model.parameters()).device
    picks: list[int] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        width = max(map(len, batch))
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(batch):
            ids[row, :len(prompt)] = torch.tensor(prompt)
            mask[row, :len(prompt)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        last = logits[torch.arange(len(batch)), mask.sum(dim=1).to(device) - 1]
        picks += last[:, choice_ids].argmax(dim=-1).tolist()
    return picks


def score_subjects(model: Any, tokenizer: Any, template: Any, subjects: list[Subject], *, n_shot: int, lang: str,
                   batch_size: int, progress: bool = True) -> dict[str, Any]:
    """Answer every question; accuracy per subject, per category and on average (percent), and every answer."""
    layout = LAYOUTS[lang]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    per_subject: dict[str, Any] = {}
    by_category: dict[str, list[bool]] = {"Average": []}
    for subject in tqdm(subjects, desc="subjects", disable=not progress):
        shots = subject.dev[:n_shot]
        answers: list[str] = []
        # questions with the same number of choices share the letter tokens; MMLU's all have four
        for letters in sorted({q.letters for q in subject.questions}):
            items = [(i, q) for i, q in enumerate(subject.questions) if q.letters == letters]
            prompts = [template.encode_oneturn(tokenizer, conversation(q, shots, subject.name, layout))[0]
                       for _, q in items]
            picks = choose(model, prompts, choice_token_ids(tokenizer, letters), pad, batch_size)
            answers += [""] * (len(subject.questions) - len(answers))
            for (i, _), pick in zip(items, picks, strict=True):
                answers[i] = letters[pick]
        correct = [a == q.answer for a, q in zip(answers, subject.questions, strict=True)]
        per_subject[subject.key] = {"name": subject.name, "category": subject.category, "answers": answers,
                                    "accuracy": _percent(correct)}
        by_category.setdefault(subject.category, []).extend(correct)
        by_category["Average"].extend(correct)
    return {"categories": {name: _percent(marks) for name, marks in by_category.items() if marks},
            "questions": len(by_category["Average"]), "subjects": per_subject}


def _percent(marks: list[bool]) -> float:
    return 100.0 * sum(marks) / len(marks) if marks else 0.0


def results_log(scores: dict[str, Any]) -> str:
    """LLaMA-Factory's results.log: one `<category right-aligned to 15>: <accuracy, 2 decimals>` line each."""
    return "\n".join(f"{name:>15}: {value:.2f}" for name, value in scores["categories"].items())


def check_save_dir(cfg: RunConfig) -> None:
    """Raise before any work if `save_dir` exists: as in LLaMA-Factory, results are never overwritten."""
    if cfg.benchmark.save_dir and Path(cfg.benchmark.save_dir).exists():
        raise FileExistsError(f"save_dir {cfg.benchmark.save_dir} exists already: choose a new folder, or remove it")


def read_task(cfg: RunConfig) -> list[Subject]:
    """The subjects of `cfg.benchmark.task` (from a local task_dir, or an s3:// one downloaded first)."""
    return read_benchmark(_local_task_dir(cfg.benchmark.task_dir), cfg.benchmark.task or "")


def score_task(cfg: RunConfig, subjects: list[Subject], model: Any, tokenizer: Any, template: Any) -> dict[str, Any]:
    """Score `model` on the task's subjects; write save_dir's results.json and results.log when set.

    Returns:
        {"task", "n_shot", "lang", "questions", "categories": {name: %}, "subjects": {key: {...}}}.
    """
    b = cfg.benchmark
    scores = score_subjects(model, tokenizer, template, subjects, n_shot=b.n_shot, lang=b.lang,
                            batch_size=b.batch_size, progress=not cfg.train.disable_tqdm)
    if b.save_dir:
        save_dir = Path(b.save_dir)
        save_dir.mkdir(parents=True)
        answers = {key: {str(i): a for i, a in enumerate(s["answers"])} for key, s in scores["subjects"].items()}
        (save_dir / "results.json").write_text(json.dumps(answers, indent=2, ensure_ascii=False), encoding="utf-8")
        (save_dir / "results.log").write_text(results_log(scores), encoding="utf-8")
        logger.info("benchmark results in %s", save_dir)
    return {"task": b.task, "n_shot": b.n_shot, "lang": b.lang, **scores}


def _local_task_dir(task_dir: str) -> Path:
    if task_dir.startswith("s3://"):
        from kubetune.storage import localize

        return Path(localize(task_dir.rstrip("/") + "/"))
    return Path(task_dir)
