"""PPO: reinforcement learning from a reward model (RLHF), with our own loop (TRL 1.x has no PPOTrainer).

Reads top to bottom:

- setup: tokenizer, template, prompts; the policy (base + LoRA adapter, or a full/freeze model)
  with a value head on its hidden states (the critic shares the backbone); the reference of the
  KL penalty (`ref_model` + `ref_model_adapters` when set, e.g. the SFT model PPO starts from, as
  in InstructGPT; else, as in LLaMA-Factory, the policy with its LoRA adapter disabled — the base
  without the adapter being trained — or a frozen copy of the base for full/freeze); the reward
  source (the rm stage's model, an HTTP endpoint, or a Python function).
- train: each PPO update samples responses to a batch of prompts, scores them, turns the scores
  and a per-token KL penalty against the reference into per-token rewards, estimates advantages
  with GAE, and takes `ppo_epochs` passes of clipped policy and value updates over minibatches.
  Checkpoints every `save_steps` updates; a killed run resumes from the last one and ends exactly
  where an uninterrupted run would.
- save: the adapter (or model), value head, tokenizer, logs and plots.
- evaluate: the mean reward of the policy's responses to the eval prompts (`eval_reward_mean`).

Sizes: one update rolls out `per_device_train_batch_size × gradient_accumulation_steps ×
ppo_buffer_size` prompts per rank; each optimiser step sees one minibatch of
`per_device_train_batch_size × gradient_accumulation_steps` of them per rank (`ppo_buffer_size`
minibatches per update and epoch), so an update makes `ppo_epochs × ppo_buffer_size` optimiser
steps. `max_steps`, `warmup_steps`, `logging_steps`, `save_steps` and `eval_steps` count PPO
updates, as in LLaMA-Factory.

Under torchrun (data parallel, `kubetune.rl.ranks`): every rank holds the policy, its value head,
the reference and the reward source, and rolls out its own share of each update's prompts; DDP
averages the gradients, and the whitening, score normalisation, KL control and logged statistics
are computed over all ranks' rows, so N ranks × b prompts train like one process with N·b (the
loss is a token mean per rank's micro-batch, so, as in TRL, exactly like one process accumulating
N micro-batches; like one batch of N·b where the responses are equally long). Rank 0 writes the
outputs; `output_dir` must be a folder every rank sees (checkpoints are read by all).
ZeRO-3 / FSDP are refused for ppo: generation would have to gather the sharded weights at every
decoding step (DeepSpeed's hybrid engine or a separate inference engine such as vLLM is what makes
that fast), which this loop does not do.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import TrainerControl, TrainerState, get_scheduler

from kubetune.config import RunConfig
from kubetune.data.setup import stage_data
from kubetune.evaluate.generate import generation_kwargs
from kubetune.evaluate.metrics import generation_metrics
from kubetune.losses.ppo import clipped_policy_loss, clipped_value_loss
from kubetune.model.policy import load_policy
from kubetune.model.reference import load_reference
from kubetune.model.value_head import ModelWithValueHead
from kubetune.plotting import plot_loss
from kubetune.rl.checkpoint import load_checkpoint, save_checkpoint, save_policy
from kubetune.rl.evaluate import score_generations_on_ranks
from kubetune.rl.gae import compute_gae, masked_mean, masked_whiten, token_rewards
from kubetune.rl.kl_control import kl_controller
from kubetune.rl.ranks import Ranks
from kubetune.rl.rewards import RewardSource, ScoreNormalizer, load_reward_source
from kubetune.rl.rollout import Experience, PromptSampler, collect_experience, policy_forward
from kubetune.tracking import JsonlLogCallback
from kubetune.train import recipe
from kubetune.train.arguments import find_resume_checkpoint, training_arguments
from kubetune.train.layout import apply as apply_layout
from kubetune.train.layout import plan_padded
from kubetune.train.preemption import preemption_requested, raise_if_preempted, released
from kubetune.train.recipe import write_bad_rows
from kubetune.train.result import StageResult, finish

logger = logging.getLogger(__name__)

PLOTTED = ("loss", "reward/mean", "objective/kl", "eval_reward_mean")


def run(cfg: RunConfig, callbacks: list | None = None) -> StageResult:
    """Run the configured `do_train` / `do_eval` / `do_predict` steps of a ppo stage.

    Args:
        cfg: a validated config (`kubetune.config.load_config`); `cfg.train.output_dir` is required.
        callbacks: extra `TrainerCallback`s; they receive `on_train_begin`, `on_step_end` (per PPO
            update), `on_log`, `on_save` and `on_train_end` as under a Trainer.

    Returns:
        StageResult with the output directory, the metrics (`eval_reward_mean`, ...) and the files written.
    """
    steps = recipe.start(cfg)
    out, do_train = steps.out, steps.train
    args = training_arguments(cfg, out)  # sets up the device and, under torchrun, the process group
    ranks = Ranks.from_arguments(args)

    # --- setup ---
    s = stage_data(cfg, "ppo", train=do_train, evaluate=steps.needs_eval_split)
    model_path, tokenizer, data = s.model_path, s.tokenizer, s.data
    stop_token_ids = s.template.stop_token_ids(tokenizer)
    device = ranks.device
    reward = load_reward_source(cfg.method, cfg.model, tokenizer, device, template=s.template)

    lm, dtype = load_policy(cfg, model_path, trainable=do_train)  # seeded: the value head's initialisation too
    if cfg.model.quantization_bit is None:
        lm.to(device)
    layout = plan_padded({"policy": lm}, "rollouts are left-padded prompts and right-padded responses")
    apply_layout(layout, {"policy": lm})

    metrics: dict[str, float] = {}
    files: dict[str, str] = {}
    write_bad_rows(out, data, files)

    # --- train ---
    if do_train:
        policy = ModelWithValueHead(lm)  # the critic: a value head on the policy's own hidden states
        # ref_model (+ adapters) when set; else LoRA: the policy with its adapter disabled (None), full/freeze:
        # a frozen copy of the base
        reference = load_reference(cfg, model_path, dtype, device).model
        with released(callbacks or []):  # SIGTERM handed back however the loop ends
            train_metrics = train(cfg, out, policy, reference, reward, tokenizer, data.train,
                                  eval_rows=data.eval if cfg.train.eval_strategy != "no" else None,
                                  stop_token_ids=stop_token_ids, callbacks=callbacks, args=args, ranks=ranks)
        if ranks.is_main:
            save_policy(policy, out)
            tokenizer.save_pretrained(str(out))
        metrics.update(train_metrics, train_tokenized_cache_hit=float(data.cache_hit),
                       train_preprocess_seconds=data.seconds)
        files["model"] = str(out)
        if cfg.train.plot_loss and ranks.is_main:
            for path in plot_loss(out, out, keys=PLOTTED):
                files[path.stem] = str(path)
        del reference

    # --- evaluate: the mean reward of the policy's responses to held-out prompts ---
    if steps.needs_eval_split and data.eval is not None:
        prompts, references = list(data.eval["input_ids"]), list(data.eval["reference"])
        with _autocast(cfg, device):
            scored = score_generations_on_ranks(ranks, lm, tokenizer, prompts, reward, cfg.generation,
                                                references=references, stop_token_ids=stop_token_ids,
                                                batch_size=cfg.train.per_device_eval_batch_size)
        metrics.update(eval_reward_mean=scored.mean, eval_reward_std=float(scored.rewards.std(unbiased=False)),
                       eval_response_length=float(scored.lengths.mean()))
        if steps.predict:
            if ranks.is_main:
                files["predictions"] = str(_write_predictions(out, tokenizer, prompts, references, scored))
            metrics.update({f"predict_{k}": v
                            for k, v in generation_metrics(scored.responses, references).items()})
        logger.info("eval_reward_mean = %.4f over %d prompts", scored.mean, len(prompts))

    return finish(out, metrics, files, layout.as_dict(), steps.world)


def train(cfg: RunConfig, out: Path, policy: ModelWithValueHead, reference: Any | None, reward: RewardSource,
          tokenizer: Any, rows: Any, *, eval_rows: Any | None, stop_token_ids: list[int],
          callbacks: list | None, args: Any | None = None, ranks: Ranks | None = None) -> dict[str, float]:
    """The PPO loop: rollout → rewards → GAE → clipped updates, with logging, checkpoints and resume.

    Args:
        cfg: the run config.
        out: output folder (checkpoints, trainer_log.jsonl).
        policy: the policy with its value head.
        reference: a frozen reference LM, or None (the policy with its adapter disabled).
        reward: the reward source.
        tokenizer: the tokenizer (pad id; text for text-based rewards).
        rows: training prompts (ppo row form: `input_ids`, `reference`).
        eval_rows: eval prompts for `eval_strategy` during training, or None.
        stop_token_ids: ids that end a response.
        callbacks: extra TrainerCallbacks.
        args: the run's `TrainingArguments` (passed to the callbacks); default: built from `cfg`.
        ranks: the data-parallel ranks (default: this process alone).

    Returns:
        train_* metrics of this call (the same on every rank).
    """
    t, m = cfg.train, cfg.method
    args = args or training_arguments(cfg, out)
    ranks = ranks or Ranks()
    device = next(policy.parameters()).device
    pad_id = tokenizer.pad_token_id
    prompts, answers = list(rows["input_ids"]), list(rows["reference"])
    minibatch_size = t.per_device_train_batch_size * t.gradient_accumulation_steps
    # one stream of prompts for the whole job; each update's batch is dealt out to the ranks
    sampler = PromptSampler(len(prompts), minibatch_size * m.ppo_buffer_size * ranks.size,
                            seed=t.data_seed or t.seed)
    model = _data_parallel(policy, ranks)
    total = t.max_steps if t.max_steps > 0 else math.ceil(t.num_train_epochs * sampler.steps_per_epoch)

    optimizer = _adamw(policy, cfg)
    warmup = t.warmup_steps if t.warmup_steps > 0 else math.ceil(t.warmup_ratio * total)
    scheduler = get_scheduler(t.lr_scheduler_type, optimizer, num_warmup_steps=warmup, num_training_steps=total)
    kl_ctl = kl_controller(m)
    score_norm = ScoreNormalizer()
    gen_kwargs = generation_kwargs(cfg.generation, tokenizer, stop_token_ids)
    temperature = cfg.generation.temperature if cfg.generation.do_sample else 1.0

    state = TrainerState(max_steps=total, logging_steps=t.logging_steps, save_steps=t.save_steps,
                         is_local_process_zero=args.local_process_index == 0, is_world_process_zero=ranks.is_main)
    checkpoint = ranks.broadcast(find_resume_checkpoint(cfg, out))  # one decision: every rank resumes, or none
    if checkpoint:
        saved = load_checkpoint(checkpoint, policy, optimizer, scheduler, ranks)
        kl_ctl.load_state_dict(saved["kl_controller"])
        score_norm.load_state_dict(saved["score_normalizer"])
        state.global_step, state.log_history = saved["step"], saved["log_history"]
        logger.info("resumed from %s at update %d of %d", checkpoint, state.global_step, total)
    events = _Events([JsonlLogCallback(out), *(callbacks or [])], args, state,
                     model=policy, processing_class=tokenizer, optimizer=optimizer, lr_scheduler=scheduler)
    if ranks.is_main:
        logger.info("ppo: %d updates of %d prompts%s (%d optimiser steps each), %d prompts in all", total,
                    sampler.batch_size, f" ({sampler.batch_size // ranks.size} per rank)" if ranks.size > 1 else "",
                    m.ppo_epochs * m.ppo_buffer_size, len(prompts))

    events("on_train_begin")
    bar = tqdm(total=total, initial=state.global_step, desc="ppo", unit="update",
               disable=t.disable_tqdm or not ranks.is_main)
    window: dict[str, list[float]] = defaultdict(list)
    window_tokens = 0.0
    losses: list[float] = []
    started = window_start = time.perf_counter()
    for step in range(state.global_step + 1, total + 1):
        # 1. rollout: sample responses, log-probs (policy, reference), values, scores
        batch = ranks.share(sampler.batch(step - 1))
        with _autocast(cfg, device):
            exp = collect_experience(policy, reference, reward, [prompts[i] for i in batch],
                                     [answers[i] for i in batch], gen_kwargs, temperature=temperature,
                                     pad_token_id=pad_id, stop_token_ids=stop_token_ids,
                                     chunk_size=t.per_device_train_batch_size)
        # 2. per-token rewards (score − β·KL) and advantages
        kl_coef = kl_ctl.value
        rollout_stats = compute_advantages(exp, cfg, kl_coef, score_norm, ranks)
        # 3. ppo_epochs of clipped policy and value updates over minibatches
        update_stats = ranks.mean_of(ppo_epochs(model, optimizer, exp, cfg, temperature=temperature,
                                                pad_token_id=pad_id))
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        kl_ctl.update(rollout_stats["objective/kl"], sampler.batch_size)

        state.global_step, state.epoch = step, step * sampler.batch_size / len(prompts)
        tokens = rollout_stats.pop("tokens")
        state.num_input_tokens_seen += int(tokens)
        window_tokens += tokens
        for key, value in {**rollout_stats, **update_stats, "kl_coef": kl_coef, "learning_rate": lr}.items():
            window[key].append(value)
        losses.append(update_stats["loss"])
        bar.update(1)
        events("on_step_end")

        preempted = preemption_requested(events.callbacks)  # a SIGTERM on any rank: save now, then stop
        if (_due(t.eval_strategy, t.eval_steps or t.logging_steps, step, total, sampler) and eval_rows is not None
                and not preempted):
            with _autocast(cfg, device):
                scored = score_generations_on_ranks(ranks, policy.pretrained_model, tokenizer,
                                                    list(eval_rows["input_ids"]), reward, cfg.generation,
                                                    references=list(eval_rows["reference"]),
                                                    stop_token_ids=stop_token_ids,
                                                    batch_size=t.per_device_eval_batch_size)
            _log(events, state, {"eval_reward_mean": scored.mean})
        if step % t.logging_steps == 0 or step == total:
            seconds = time.perf_counter() - window_start
            logs = {k: sum(v) / len(v) for k, v in window.items()}
            logs["tokens_per_second"] = round(window_tokens / seconds, 2) if seconds > 0 else 0.0
            _log(events, state, {**logs, "epoch": round(state.epoch, 4)})
            bar.set_postfix(reward=f"{logs['reward/mean']:.3f}", kl=f"{logs['objective/kl']:.3f}")
            window.clear()
            window_tokens, window_start = 0.0, time.perf_counter()
        if _due(t.save_strategy, t.save_steps, step, total, sampler) or preempted:
            save_checkpoint(out, step, policy, optimizer, scheduler,
                            {"step": step, "kl_controller": kl_ctl.state_dict(),
                             "score_normalizer": score_norm.state_dict(), "log_history": state.log_history},
                            save_total_limit=t.save_total_limit, save_only_model=t.save_only_model, ranks=ranks)
            events("on_save")
        if ranks.broadcast(events.control.should_training_stop):  # rank 0's callbacks decide for all
            break
    bar.close()
    events("on_train_end")
    raise_if_preempted(events.callbacks)  # a checkpoint, not a final policy: the rerun resumes

    last = state.log_history[-1] if state.log_history else {}
    return {"train_runtime": round(time.perf_counter() - started, 3), "train_steps": float(state.global_step),
            "train_loss": sum(losses) / len(losses) if losses else float("nan"),
            "train_reward_mean": float(last.get("reward/mean", float("nan"))),
            "train_objective_kl": float(last.get("objective/kl", float("nan"))), "train_kl_coef": kl_ctl.value}


def compute_advantages(exp: Experience, cfg: RunConfig, kl_coef: float, score_norm: ScoreNormalizer,
                       ranks: Ranks | None = None) -> dict[str, float]:
    """Fill `exp.advantages` and `exp.returns`; return the rollout's statistics (over all ranks' rows).

    scores (optionally normalised, `ppo_score_norm`) → per-token rewards with the KL penalty →
    (optionally whitened, `ppo_whiten_rewards`) → GAE (`gamma`, `lam`) → whitened advantages.
    Normalisation and whitening use every rank's rows, as one process holding all of them would.
    """
    m, ranks = cfg.method, ranks or Ranks()
    all_scores = ranks.gather(exp.scores)  # rank order = the order of the update's prompt batch
    mine = slice(ranks.rank * len(exp), (ranks.rank + 1) * len(exp))
    scores = score_norm(all_scores)[mine] if m.ppo_score_norm else exp.scores
    rewards, kl = token_rewards(scores, exp.logprobs, exp.ref_logprobs, exp.mask, kl_coef)
    if m.ppo_whiten_rewards:
        rewards = masked_whiten(rewards, exp.mask, shift_mean=False, sum_over=ranks.sum)
    advantages, returns = compute_gae(rewards, exp.values, exp.mask, m.gamma, m.lam)
    exp.advantages, exp.returns = masked_whiten(advantages, exp.mask, sum_over=ranks.sum), returns
    sequence_kl = ranks.gather(kl.sum(dim=1))
    rlhf_reward = ranks.gather(scores) - kl_coef * sequence_kl
    tokens = float(exp.mask.sum()) + sum(len(p) for p in exp.prompt_ids)  # non-padding, for tokens/s
    return {
        "reward/mean": float(all_scores.mean()),
        "reward/std": float(all_scores.std(unbiased=False)),
        "objective/kl": float(sequence_kl.mean()),
        "objective/rlhf_reward": float(rlhf_reward.mean()),
        "value/mean": float(masked_mean(exp.values, exp.mask, sum_over=ranks.sum)),
        "returns/mean": float(masked_mean(returns, exp.mask, sum_over=ranks.sum)),
        "response_length": float(ranks.gather(exp.mask.sum(dim=1)).mean()),
        "tokens": float(ranks.sum(torch.tensor(tokens, dtype=torch.float64))),
    }


def ppo_epochs(policy: Any, optimizer: torch.optim.Optimizer, exp: Experience, cfg: RunConfig, *,
               temperature: float, pad_token_id: int) -> dict[str, float]:
    """`ppo_epochs` passes over the experience in shuffled minibatches; one optimiser step per minibatch.

    Each minibatch is split into `gradient_accumulation_steps` micro-batches of
    `per_device_train_batch_size`; the loss is policy loss + vf_coef × value loss. `policy` is the
    `ModelWithValueHead`, or its DistributedDataParallel wrapper (gradients are then averaged over
    the ranks once per minibatch, at its last micro-batch). Returns this rank's statistics.
    """
    t, m = cfg.train, cfg.method
    device = next(policy.parameters()).device
    params = [p for p in policy.parameters() if p.requires_grad]
    micro = t.per_device_train_batch_size
    size = micro * t.gradient_accumulation_steps
    stats: dict[str, list[float]] = defaultdict(list)
    policy.train()
    for _ in range(m.ppo_epochs):
        order = torch.randperm(len(exp)).tolist()
        for start in range(0, len(order), size):
            minibatch = order[start:start + size]
            micro_batches = [minibatch[i:i + micro] for i in range(0, len(minibatch), micro)]
            for i, indices in enumerate(micro_batches):
                batch, old = exp.minibatch(indices, pad_token_id, device)
                with _sync_gradients(policy, i == len(micro_batches) - 1):
                    with _autocast(cfg, device):
                        logprobs, values, entropy = policy_forward(policy, batch, temperature, with_entropy=True)
                    mask = batch.response_mask
                    pg = clipped_policy_loss(logprobs, old["logprobs"], old["advantages"], mask, m.cliprange)
                    vf = clipped_value_loss(values.float(), old["values"], old["returns"], mask, m.cliprange_value)
                    loss = pg.loss + m.vf_coef * vf.loss
                    (loss / len(micro_batches)).backward()
                for key, value in (("loss", loss), ("policy/loss", pg.loss), ("value/loss", vf.loss),
                                   ("policy/clipfrac", pg.clipfrac), ("value/clipfrac", vf.clipfrac),
                                   ("policy/approxkl", pg.approx_kl), ("policy/ratio", pg.ratio),
                                   ("policy/entropy", masked_mean(entropy, mask))):
                    stats[key].append(value.item())
            norm = torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm if t.max_grad_norm > 0 else math.inf)
            stats["grad_norm"].append(float(norm))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return {key: sum(values) / len(values) for key, values in stats.items()}


# --- helpers ---


def _data_parallel(policy: ModelWithValueHead, ranks: Ranks) -> Any:
    """The policy as the update step runs it: wrapped in DistributedDataParallel on several ranks."""
    if ranks.size == 1:
        return policy
    from torch.nn.parallel import DistributedDataParallel

    device = next(policy.parameters()).device
    # broadcast_buffers off: the buffers (rotary frequencies) are constants, identical on every rank
    return DistributedDataParallel(policy, device_ids=[device] if device.type == "cuda" else None,
                                   broadcast_buffers=False)


def _sync_gradients(model: Any, sync: bool) -> contextlib.AbstractContextManager[Any]:
    """DDP's `no_sync` on all but the last micro-batch of a minibatch: one all-reduce per optimiser step."""
    return contextlib.nullcontext() if sync or not hasattr(model, "no_sync") else model.no_sync()


def _adamw(policy: ModelWithValueHead, cfg: RunConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (adapter or layers, and the value head); no decay on biases/norms."""
    t = cfg.train
    trainable = [p for p in policy.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": t.weight_decay},
              {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=t.learning_rate,
                             betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_epsilon,
                             fused=True if t.optim == "adamw_torch_fused" else None)


@contextlib.contextmanager
def _autocast(cfg: RunConfig, device: torch.device) -> Iterator[None]:
    """bf16 mixed precision when `bf16: true` (float32 master weights); a no-op otherwise."""
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bool(cfg.train.bf16)):
        yield


def _due(strategy: str, every: int, step: int, total: int, sampler: PromptSampler) -> bool:
    """Whether an every-n-steps / every-epoch action (eval, save) falls on `step`."""
    if strategy == "steps":
        return step % every == 0
    if strategy == "epoch":
        return step % sampler.steps_per_epoch == 0 or step == total
    return False


def _log(events: _Events, state: TrainerState, logs: dict[str, float]) -> None:
    state.log_history.append({**logs, "step": state.global_step})
    events("on_log", logs=logs)


class _Events:
    """Send Trainer callback events (to JsonlLogCallback, MLflow, tests) from our own loop."""

    def __init__(self, callbacks: list, args: Any, state: TrainerState, **kwargs: Any) -> None:
        self.callbacks, self.args, self.state, self.kwargs = callbacks, args, state, kwargs
        self.control = TrainerControl()

    def __call__(self, event: str, **kwargs: Any) -> None:
        for callback in self.callbacks:
            result = getattr(callback, event)(self.args, self.state, self.control, **self.kwargs, **kwargs)
            if result is not None:
                self.control = result


def _write_predictions(out: Path, tokenizer: Any, prompts: list[list[int]], references: list[str],
                       scored: Any) -> Path:
    path = out / "generated_predictions.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for prompt, response, label, score in zip(prompts, scored.responses, references, scored.rewards.tolist(),
                                                  strict=True):
            f.write(json.dumps({"prompt": tokenizer.decode(prompt, skip_special_tokens=False), "predict": response,
                                "label": label, "reward": score}, ensure_ascii=False) + "\n")
    return path
