"""`kubetune estimate`: peak GPU memory per device of a training config, from the model's config alone.

No weights are read: the model is built on the meta device from its `config.json`, which gives the exact
parameter count and every linear layer's shape (for LoRA). What kubetune's sft stage does decides the
byte counts (see `docs/estimate.md`):

- weights: bfloat16 with `pure_bf16`, and for a plain LoRA base under mixed precision (`bf16`/`fp16`,
  `model.loader.weight_dtype`); else float32 (full and freeze weights are their own master copy).
  4/8-bit: linear layers quantised; embeddings, head and norms
  are cast to float32 by PEFT's k-bit preparation.
- trainable parameters: LoRA adapters are float32 (PEFT upcasts them); with freeze/full they are the
  weights themselves. Each needs a gradient and AdamW's two moments in its own dtype.
- activations: with gradient checkpointing, each layer's input plus one layer recomputed; without, every
  layer's saved tensors (attention scores not stored: SDPA/FlashAttention kernels on a GPU).
- logits: batch × cutoff_len × vocab in the compute dtype, plus a float32 copy and its gradient in the loss.
- overhead: ~1 GiB of CUDA context and allocator slack per device.

ZeRO (`zero_stage`, with `num_gpus`) partitions, as DeepSpeed does: 1 the optimizer states (with a
float32 master copy, weights in 16 bits), 2 also the gradients, 3 also the weights.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubetune.config.schema import TrainArguments

GIB = 1024**3
CUDA_CONTEXT = 1.0 * GIB

# name → memory in GiB as the card reports it (what a process can roughly use)
GPUS: dict[str, float] = {"T4 16GB": 15.0, "L4 24GB": 22.0, "A10G 24GB": 22.0, "A100 40GB": 39.4,
                          "A100 80GB": 79.2, "H100 80GB": 79.2}
# output heads: not quantised by bitsandbytes, not targeted by `lora_target: all`
_HEADS = ("lm_head", "score", "v_head", "output_layer", "embed_out")


@dataclass
class ModelShape:
    """What the estimate needs to know about a model."""

    total_params: int
    linear_params: int  # in quantisable linear layers (not the head)
    hidden_size: int
    intermediate_size: int
    num_layers: int
    vocab_size: int
    num_kv_heads: int
    head_dim: int
    # (short name, in_features, out_features) of every linear layer except the head
    linears: list[tuple[str, int, int]] = field(default_factory=list)
    # parameter count of each named module, for `additional_target` and freeze
    module_params: dict[str, int] = field(default_factory=dict)


@dataclass
class Estimate:
    """Bytes per device of each part of peak training memory, and the sum."""

    weights: float
    trainable: float
    gradients: float
    optimizer: float
    activations: float
    logits: float
    overhead: float
    trainable_params: int
    total_params: int
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return (self.weights + self.trainable + self.gradients + self.optimizer + self.activations
                + self.logits + self.overhead)


def model_shape(config: Any) -> ModelShape:
    """Build the model on the meta device (no memory, no weights) and read its shapes."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    text = config.get_text_config()
    linears, linear_params, module_params = [], 0, {}
    for name, module in model.named_modules():
        n = sum(p.numel() for p in module.parameters(recurse=True))
        module_params[name] = n
        short = name.split(".")[-1]
        if isinstance(module, torch.nn.Linear) and short not in _HEADS:
            linears.append((short, module.in_features, module.out_features))
            linear_params += module.weight.numel()
    heads = text.num_attention_heads
    return ModelShape(
        total_params=sum(p.numel() for p in model.parameters()),  # tied weights counted once
        linear_params=linear_params, hidden_size=text.hidden_size,
        intermediate_size=getattr(text, "intermediate_size", None) or 4 * text.hidden_size,
        num_layers=text.num_hidden_layers, vocab_size=text.vocab_size,
        num_kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
        linears=linears, module_params=module_params,
    )


def lora_params(shape: ModelShape, rank: int, targets: list[str], *, dora: bool = False) -> int:
    """Adapter parameters: r × (in + out) per targeted linear layer (+ out for DoRA's magnitudes)."""
    chosen = [(i, o) for name, i, o in shape.linears if targets == ["all"] or name in targets]
    return sum(rank * (i + o) + (o if dora else 0) for i, o in chosen)


def oft_params(shape: ModelShape, block_size: int, rank: int, targets: list[str]) -> int:
    """OFT parameters: per targeted linear, in/b blocks of b(b−1)/2 (a skew-symmetric b × b), b the block size
    (or in/r given the block count r), as PEFT stores them."""
    chosen = [i for name, i, _ in shape.linears if targets == ["all"] or name in targets]
    sizes = [(i, block_size or max(1, i // max(rank, 1))) for i in chosen]
    return sum((i // b) * b * (b - 1) // 2 for i, b in sizes)


def _modules(shape: ModelShape, names: list[str]) -> int:
    """Parameters of the modules whose name ends with one of `names` (PEFT's modules_to_save matching)."""
    found = {m: n for m, n in shape.module_params.items() if any(m.endswith(x) for x in names)}
    outer = [m for m in found if not any(m != o and m.startswith(o + ".") for o in found)]
    return sum(found[m] for m in outer)


def estimate(shape: ModelShape, *, method: str = "lora", quantization_bit: int | None = None,
             batch_size: int = 1, cutoff_len: int = 1024, gradient_checkpointing: bool = True,
             pure_bf16: bool = False, mixed_precision: bool = True, lora_rank: int = 8,
             lora_target: list[str] | None = None, use_dora: bool = False,
             additional_target: list[str] | None = None, freeze_trainable_layers: int = 2,
             oft_block_size: int = 32, oft_rank: int = 0, oft_target: list[str] | None = None,
             zero_stage: int = 0, num_gpus: int = 1, cuda_context: float = CUDA_CONTEXT) -> Estimate:
    """Peak training memory per device, in bytes.

    Args:
        shape: from `model_shape`.
        method: full, freeze, lora (qlora = lora + quantization_bit) or oft.
        quantization_bit: 4 or 8 for QLoRA, None for an unquantised base.
        batch_size: per-device batch; cutoff_len: tokens per row (the worst case: every row full).
        gradient_checkpointing: recompute activations in backward.
        pure_bf16: bfloat16 weights and optimizer states; else float32 weights, except a LoRA base under
            mixed precision (16-bit).
        mixed_precision: bf16/fp16 autocast: activations in 16 bits (else float32).
        lora_rank, lora_target, use_dora, additional_target: the LoRA settings.
        freeze_trainable_layers: layers trained by `freeze` (negative: the first n).
        oft_block_size, oft_rank, oft_target: the OFT settings (its targets already resolved, see `from_config`).
        zero_stage, num_gpus: DeepSpeed ZeRO partitioning across num_gpus devices (0: none).
        cuda_context: fixed per-device overhead (0 on a CPU).
    """
    s = shape
    notes: list[str] = []
    lora_base_16bit = method == "lora" and mixed_precision and not additional_target  # loader.weight_dtype
    weight_bytes = 2 if pure_bf16 or lora_base_16bit else 4
    act_bytes = 2 if (mixed_precision or pure_bf16) else 4
    other_params = s.total_params - s.linear_params
    if zero_stage:  # DeepSpeed keeps 16-bit weights plus a float32 master copy in the optimizer
        weight_bytes = 2

    # --- weights and trainable parameters ---
    if quantization_bit is not None:
        per_param = {4: 0.5 + 0.0165, 8: 1.0 + 0.0165}[quantization_bit]  # + (double-)quantisation constants
        weights = s.linear_params * per_param + other_params * 4  # prepare_model_for_kbit_training: fp32 rest
    else:
        weights = s.total_params * weight_bytes
    if method in ("lora", "oft"):
        trainable_params = (lora_params(s, lora_rank, lora_target or ["all"], dora=use_dora) if method == "lora"
                            else oft_params(s, oft_block_size, oft_rank, oft_target or ["all"]))
        extra = _modules(s, additional_target or [])
        trainable_params += extra
        trainable = trainable_params * 4.0  # PEFT keeps adapters (and modules_to_save copies) in float32
        state_bytes = 4
    else:
        if method == "full":
            trainable_params = s.total_params
        else:
            n = freeze_trainable_layers
            layers = min(abs(n), s.num_layers)
            layer = next((n for m, n in s.module_params.items() if m.endswith("layers.0")), None)
            trainable_params = int(layer or s.total_params / s.num_layers) * layers
        trainable = 0.0  # they are the weights
        state_bytes = weight_bytes
    gradients = trainable_params * state_bytes
    optimizer = trainable_params * 2 * state_bytes  # AdamW: exp_avg and exp_avg_sq
    if zero_stage and method not in ("lora", "oft"):
        optimizer = trainable_params * (4 + 8)  # fp32 master + two fp32 moments
        gradients = trainable_params * 2
    if zero_stage >= 1 and num_gpus > 1:
        optimizer /= num_gpus
    if zero_stage >= 2 and num_gpus > 1:
        gradients /= num_gpus
    if zero_stage >= 3 and num_gpus > 1:
        weights /= num_gpus
        notes.append(f"ZeRO-3: weights partitioned over {num_gpus} devices")

    # --- activations ---
    tokens = batch_size * cutoff_len
    h, i, kv = s.hidden_size, s.intermediate_size, s.num_kv_heads * s.head_dim
    # saved per token per layer: norm outputs, q/k/v, attention output, o input, MLP gate/up/act/product, residuals
    per_layer = tokens * (8 * h + 2 * kv + 4 * i) * act_bytes
    if gradient_checkpointing:
        activations = s.num_layers * tokens * h * act_bytes + per_layer
    else:
        activations = s.num_layers * per_layer
    logits = tokens * s.vocab_size * (act_bytes + 4 + 4)
    return Estimate(weights=weights, trainable=trainable, gradients=gradients, optimizer=optimizer,
                    activations=activations, logits=logits, overhead=cuda_context,
                    trainable_params=trainable_params, total_params=s.total_params, notes=notes)


def recommend(est_fn: Any, headroom: float = 0.9) -> list[dict[str, Any]]:
    """For each GPU type: the fewest devices that fit (plain data parallel, else ZeRO-3 up to 8), or none.

    Args:
        est_fn: `(zero_stage, num_gpus) -> Estimate`.
        headroom: use at most this share of a card's memory (fragmentation, spikes).
    """
    rows = []
    for gpu, gib in GPUS.items():
        fit = None
        if est_fn(0, 1).total <= gib * GIB * headroom:
            fit = {"gpus": 1, "zero_stage": 0}
        else:
            for n in (2, 4, 8):
                if est_fn(3, n).total <= gib * GIB * headroom:
                    fit = {"gpus": n, "zero_stage": 3}
                    break
        rows.append({"gpu": gpu, **(fit or {"gpus": None, "zero_stage": None})})
    return rows


def sharding_stage(cfg: Any) -> int | None:
    """How the config spreads a model over its GPUs, as a ZeRO stage: its DeepSpeed config's stage, 3 for
    FSDP (fully sharded), or None without either (DDP: every GPU holds the whole model)."""
    from kubetune.train.strategy import zero_stage

    if cfg.train.fsdp_options:
        return 2 if "shard_grad_op" in cfg.train.fsdp_options else 3
    return zero_stage(cfg)


def gpus_that_fit(cfg: Any, gpu_memory_gib: float, headroom: float = 0.9, zero_stage: int | None = None) -> int | None:
    """The fewest GPUs of `gpu_memory_gib` each that fit a stage (one, else 2/4/8 sharded by ZeRO), or None.

    This is the estimate of the trained model (weights, gradients, optimizer, activations); a ppo
    stage's reward model is not counted, so leave headroom or set `gpus` by hand there.

    Args:
        cfg: the stage's RunConfig.
        gpu_memory_gib: memory of one GPU.
        headroom: use at most this share of it.
        zero_stage: how the run shards over several GPUs (`sharding_stage`); None or 0 = not at all, so
            only one GPU can fit: more DDP ranks each hold the same whole model.
    """
    _, at = estimate_config(cfg)
    budget = gpu_memory_gib * GIB * headroom
    if at(0, 1).total <= budget:
        return 1
    if not zero_stage:
        return None
    return next((n for n in (2, 4, 8) if at(zero_stage, n).total <= budget), None)


def estimate_config(cfg: Any, *, zero_stage: int = 0, num_gpus: int = 1, cuda_context: float = CUDA_CONTEXT,
                    shape: ModelShape | None = None) -> tuple[Estimate, Any]:
    """Estimate a RunConfig; returns the estimate and a `(zero_stage, num_gpus) -> Estimate` for `recommend`."""
    if shape is None:
        from transformers import AutoConfig

        from kubetune.model.loader import resolve_model_path

        shape = model_shape(AutoConfig.from_pretrained(resolve_model_path(cfg.model),
                                                       trust_remote_code=cfg.model.trust_remote_code))
    from kubetune.model.adapters import oft_targets

    m, t = cfg.method, cfg.train

    def at(zero: int, n: int) -> Estimate:
        return estimate(shape, method=m.finetuning_type, quantization_bit=cfg.model.quantization_bit,
                        batch_size=t.per_device_train_batch_size, cutoff_len=cfg.data.cutoff_len,
                        gradient_checkpointing=t.gradient_checkpointing, pure_bf16=t.pure_bf16,
                        mixed_precision=_mixed_precision(t), lora_rank=m.lora_rank, lora_target=m.lora_target,
                        use_dora=m.use_dora, additional_target=m.additional_target,
                        freeze_trainable_layers=m.freeze_trainable_layers, oft_block_size=m.oft_block_size,
                        oft_rank=m.oft_rank, oft_target=oft_targets(m), zero_stage=zero, num_gpus=n,
                        cuda_context=cuda_context)

    return at(zero_stage, num_gpus), at


def render(est: Estimate, rows: list[dict[str, Any]], title: str) -> str:
    """A readable table: the breakdown, then the GPU recommendation."""
    parts = [("weights", est.weights), ("trainable params (adapter)", est.trainable), ("gradients", est.gradients),
             ("optimizer states (AdamW)", est.optimizer), ("activations", est.activations),
             ("logits + loss", est.logits), ("CUDA context / overhead", est.overhead)]
    lines = [title, f"  trainable {est.trainable_params:,} of {est.total_params:,} parameters "
                    f"({100 * est.trainable_params / max(est.total_params, 1):.3f}%)", ""]
    lines += [f"  {name:28} {value / GIB:8.2f} GiB" for name, value in parts]
    lines += [f"  {'-' * 28} {'-' * 12}", f"  {'peak per device':28} {est.total / GIB:8.2f} GiB", ""]
    lines += [f"  note: {n}" for n in est.notes]
    lines.append("  GPU           fits on")
    for row in rows:
        fit = ("does not fit (use QLoRA, a smaller cutoff_len or batch)" if row["gpus"] is None
               else f"{row['gpus']} GPU" + ("s with DeepSpeed ZeRO-3" if row["zero_stage"] else ""))
        lines.append(f"  {row['gpu']:13} {fit}")
    lines.append("\n  (an estimate within ~25% of measured peaks: see docs/estimate.md)")
    return "\n".join(lines)


def estimate_command(argv: list[str]) -> int:
    """`kubetune estimate cfg.yaml [key=value ...] [--json] [--zero N --gpus N]`."""
    from kubetune.config import ConfigError, load_config

    as_json = "--json" in argv
    argv = [a for a in argv if a != "--json"]
    zero = num = None
    rest: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg in ("--zero", "--gpus"):
            value = int(next(it))
            zero, num = (value, num) if arg == "--zero" else (zero, value)
        else:
            rest.append(arg)
    path = rest[0] if rest and not rest[0].startswith("-") and "=" not in rest[0] else None
    try:
        cfg = load_config(path, rest[1:] if path else rest)
    except ConfigError as err:
        print(f"kubetune estimate: {err}", flush=True)
        return 2
    # the run's own sharding and rank count unless the flags ask about another
    zero = sharding_stage(cfg) or 0 if zero is None else zero
    num = num or _launched_ranks()
    est, at = estimate_config(cfg, zero_stage=zero, num_gpus=num)
    rows = recommend(at)
    if as_json:
        print(json.dumps({**asdict(est), "total": est.total,
                          "total_gib": round(est.total / GIB, 3), "recommendation": rows}, indent=2))
    else:
        method = cfg.method.finetuning_type + (f" ({cfg.model.quantization_bit}-bit)"
                                               if cfg.model.quantization_bit else "")
        print(render(est, rows, f"{cfg.model.model_name_or_path}: {method}, batch "
                                f"{cfg.train.per_device_train_batch_size} × {cfg.data.cutoff_len} tokens, "
                                f"checkpointing {'on' if cfg.train.gradient_checkpointing else 'off'}"))
    return 0



def _launched_ranks() -> int:
    """The ranks `kubetune train` would launch here (NNODES × NPROC_PER_NODE as set, or one per visible GPU)."""
    from kubetune.launch.torchrun import torchrun_plan

    try:
        plan = torchrun_plan()
    except ValueError:
        return 1
    return plan.world_size if plan is not None else 1


def _mixed_precision(t: TrainArguments) -> bool:
    """16-bit activations: bf16/fp16 as set; an unset bf16 counts as on, as it is on the GPUs this
    estimates (Ampere and later), unless pure_bf16 decides instead."""
    if t.bf16 is None:
        return not t.pure_bf16
    return t.bf16 or t.fp16


def checkpoint_bytes(est: Estimate, method: str, *, save_only_model: bool = False) -> float:
    """Bytes one checkpoint of the run takes on disk, by the estimate: the saved weights plus the optimizer state.

    A LoRA/OFT checkpoint saves the adapter (float32, `est.trainable`); a full or freeze one the whole model
    (`est.weights`, unsharded). AdamW's two moments (`est.optimizer`) come with it unless `save_only_model`.
    The scheduler, generator and trainer state files are kilobytes, and left out.

    Args:
        est: the run's estimate on one device, unsharded (`estimate_config` with zero_stage 0).
        method: the finetuning_type (lora, oft, freeze, full).
        save_only_model: checkpoints without the optimizer state.
    """
    weights = est.trainable if method in ("lora", "oft") else est.weights
    return weights + (0.0 if save_only_model else est.optimizer)
