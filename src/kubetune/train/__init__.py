"""The shared Trainer kit the stage recipes compose.

- `arguments`: our (LLaMA-Factory-named) settings as transformers' TrainingArguments; resume.
- `recipe`: what every Trainer-based recipe does after its set-up: train and save, evaluate.
- `preference_trainer`: one Trainer for the pairwise and KTO objectives (dpo, kto, rm).
- `result`: what a stage returns, and its run_summary.json.
"""
