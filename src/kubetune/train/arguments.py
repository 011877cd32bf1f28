"""Map our (LLaMA-Factory-named) training settings onto transformers' TrainingArguments.

transformers 5 renamed or dropped some arguments users still write (`warmup_ratio`,
`overwrite_output_dir`, ...). Users keep the names they know; this is the one place that
knows the difference.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments

from kubetune.config import ConfigError, Problem, RunConfig
from kubetune.data.packing import packing_mode

logger = logging.getLogger(__name__)


def training_arguments(cfg: RunConfig, output_dir: Path) -> TrainingArguments:
    """The run's TrainingArguments; a stage builds them *before* it loads its model.

    Under DeepSpeed ZeRO-3 the arguments hold the DeepSpeed config that transformers' `from_pretrained`
    looks up (`is_deepspeed_zero3_enabled`, a weak reference to `args.hf_deepspeed_config`): only
    while they exist does it build the model under `deepspeed.zero.Init`, each rank holding its
    partition of every weight and rank 0 alone reading the checkpoint. Loaded first, every rank
    would hold the whole base in memory until the Trainer partitions it. They also start the
    process group, which that partitioned load needs.

    Args:
        cfg: the run config.
        output_dir: where the Trainer writes checkpoints (the stage's output folder).
    """
    t = cfg.train
    # transformers 5 reads a float warmup_steps in [0, 1) as a ratio of total steps.
    warmup: float = t.warmup_steps if t.warmup_steps > 0 else t.warmup_ratio
    report_to = [] if t.report_to in (["none"], []) else t.report_to
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=warmup,
        weight_decay=t.weight_decay,
        adam_beta1=t.adam_beta1,
        adam_beta2=t.adam_beta2,
        adam_epsilon=t.adam_epsilon,
        max_grad_norm=t.max_grad_norm,
        optim=t.optim,
        bf16=t.bf16,
        fp16=t.fp16,
        use_liger_kernel=cfg.model.enable_liger_kernel,  # GPU only: rules.kernels_installed
        seed=t.seed,
        train_sampling_strategy=sampling_strategy(cfg),
        data_seed=t.data_seed,
        ddp_timeout=t.ddp_timeout,
        logging_steps=t.logging_steps,
        save_strategy=t.save_strategy,
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        save_only_model=t.save_only_model,
        eval_strategy=t.eval_strategy,
        eval_steps=t.eval_steps or t.logging_steps,
        **best_model_arguments(cfg),
        report_to=report_to,
        run_name=t.run_name,
        dataloader_num_workers=t.dataloader_num_workers,
        disable_tqdm=t.disable_tqdm,
        # we enable checkpointing on the model ourselves (it must happen before PEFT wraps it); transformers 5's
        # name, as `gradient_checkpointing` is its deprecated alias
        activation_checkpointing=False,
        remove_unused_columns=False,  # our collator needs position_ids, which the model signature hides
        include_num_input_tokens_seen="non_padding",
        use_cpu=not torch.cuda.is_available(),
        dataloader_pin_memory=torch.cuda.is_available(),
        **sharding_arguments(cfg),
    )
    if "kubeflow" in args.report_to and "kubeflow" not in report_to:
        # transformers adds its own TrainJob progress reporter whenever Kubeflow Trainer's status variables are
        # set, whatever report_to says; kubetune's (`tracking.trainjob_status`, which `run_stage` adds) reports
        # instead, so the job's status is written once. `report_to: kubeflow` keeps transformers' one.
        args.report_to.remove("kubeflow")
    if t.deepspeed:
        deepspeed_comm_over_torch_group()
    return args


def best_model_arguments(cfg: RunConfig) -> dict[str, Any]:
    """`load_best_model_at_end`, `metric_for_best_model` and `greater_is_better` for TrainingArguments.

    transformers' EarlyStoppingCallback needs a metric; with `early_stopping_steps` and none named, the eval
    loss is watched (transformers' own default once load_best_model_at_end is on).
    """
    t = cfg.train
    metric = t.metric_for_best_model
    if metric is None and t.early_stopping_steps is not None:
        metric = "loss"
    return {"load_best_model_at_end": t.load_best_model_at_end, "metric_for_best_model": metric,
            "greater_is_better": t.greater_is_better}


def deepspeed_comm_over_torch_group() -> None:
    """Give DeepSpeed's communication layer the process group transformers started, if it has none yet.

    On CPU ranks TrainingArguments starts torch.distributed through accelerate's CPU path (gloo), not
    DeepSpeed's, so `deepspeed.comm` stays uninitialised until the Trainer's `deepspeed.initialize`.
    A ZeRO-3 `from_pretrained` before that (`zero.Init`) reads the world size from it and sees 1:
    "train_batch_size is not equal to micro_batch_per_gpu * gradient_acc_step * world_size 4 != 2 * 1 * 1".
    Wrapping the running group is what `deepspeed.initialize` does later anyway; on GPUs accelerate
    has done it already.
    """
    if not torch.distributed.is_initialized():
        return
    from deepspeed import comm

    if not comm.is_initialized():
        comm.init_distributed(dist_backend=torch.distributed.get_backend(), auto_mpi_discovery=False)


def sharding_arguments(cfg: RunConfig) -> dict[str, Any]:
    """TrainingArguments' `deepspeed`, `fsdp` and `fsdp_config`, passed as the user wrote them.

    transformers resolves a DeepSpeed config's "auto" values from the other TrainingArguments
    (`HfTrainerDeepSpeedConfig.trainer_config_process`: micro-batch, accumulation, clipping,
    fp16/bf16; optimiser and scheduler once the Trainer has the model), so we pass the file or
    mapping on rather than fill them in ourselves. DeepSpeed's CPU accelerator (picked by itself
    when there is no GPU) and the gloo backend run it under torchrun without any setting of ours.

    Raises:
        ConfigError: FSDP asked for without a CUDA GPU. Accelerate runs FSDP on GPUs only: on CPU
            ranks it would silently train plain DDP (each rank a whole model), or refuse with "Using
            fsdp only works in distributed training", so say it before any work.
    """
    t = cfg.train
    if not t.fsdp_options:
        return {"deepspeed": t.deepspeed}
    if not torch.cuda.is_available():
        raise ConfigError([Problem("fsdp", t.fsdp, cfg.origin("fsdp"),
                                   "FSDP runs on CUDA GPUs only, and this machine has none",
                                   "run it on GPUs, or use deepspeed (its ZeRO-3 shards on CPU ranks too)")],
                          cfg.source)
    return {"deepspeed": t.deepspeed, "fsdp": t.fsdp, "fsdp_config": t.fsdp_config}


def sampling_strategy(cfg: RunConfig) -> str:
    """transformers' training sampler: dataset order (`disable_shuffling`), length-grouped, or shuffled."""
    if cfg.train.disable_shuffling:
        return "sequential"
    return "group_by_length" if groups_by_length(cfg) else "random"


def groups_by_length(cfg: RunConfig) -> bool:
    """Length-grouped batches for unpacked sft/pt rows: `group_by_length: true` (off by default).

    Rows of one batch are padded to the longest, so mixing a 40-token row with a 500-token one
    computes 460 pad tokens; transformers' LengthGroupedSampler sorts each run of 50 batches by
    length. 1.8× the default's tokens/s on the benchmark's mixed lengths, but batches of similar
    rows train differently: on the demo (1 epoch of kubi_sft) the eval loss rose from 0.23 to 0.30,
    so it is opt-in. Packed rows have no padding to save; pairs are batched by their own collators.
    """
    packed, _ = packing_mode(cfg.data.packing, cfg.data.neat_packing, cfg.method.stage)
    return bool(cfg.train.group_by_length) and cfg.method.stage in ("sft", "pt") and not packed


# What a finished checkpoint holds last: the Trainer's `_save_checkpoint` writes the weights, then the optimizer,
# scheduler and RNG state, and `trainer_state.json` at the very end (transformers 5.23); a PPO checkpoint is
# renamed into place whole, with `ppo_state.json` (`kubetune.rl.checkpoint`).
COMPLETION_MARKERS = ("trainer_state.json", "ppo_state.json")
# transformers' `enable_jit_checkpoint` leaves this in a checkpoint until its save finishes
INCOMPLETE_SENTINEL = "checkpoint-is-incomplete.txt"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def find_resume_checkpoint(cfg: RunConfig, output_dir: Path) -> str | None:
    """The checkpoint to resume from: the explicit one, else the last complete one in output_dir (unless overwriting).

    A `checkpoint-N` folder without its completion marker (`COMPLETION_MARKERS`) was cut short, by a SIGKILL
    mid-save for one: it is skipped, with a warning, for the last complete one before it.
    """
    if cfg.train.resume_from_checkpoint:
        return cfg.train.resume_from_checkpoint
    if cfg.train.overwrite_output_dir or not output_dir.is_dir():
        return None
    last = last_complete_checkpoint(output_dir)
    if last:
        logger.info("resuming from %s (set overwrite_output_dir: true to start over)", last)
    return last


def last_complete_checkpoint(output_dir: Path) -> str | None:
    """The highest-numbered `checkpoint-N` in `output_dir` that a save finished; None if there is none."""
    found = sorted(((int(m.group(1)), p) for p in output_dir.iterdir()
                    if (m := _CHECKPOINT.match(p.name)) and p.is_dir()), reverse=True)
    for _, path in found:
        if any((path / name).is_file() for name in COMPLETION_MARKERS) and not (path / INCOMPLETE_SENTINEL).exists():
            return str(path)
        logger.warning("%s is incomplete (no %s: its save was cut short): not resuming from it", path,
                       " or ".join(COMPLETION_MARKERS))
    return None
