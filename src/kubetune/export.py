"""Merge an adapter into its base and write a standalone model: safetensors shards plus tokenizer."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from kubetune.config import RunConfig
from kubetune.model.adapters import prepare_for_training
from kubetune.model.deepspeed_unwrap import defer_deepspeed_import
from kubetune.model.loader import load_base_model, load_tokenizer, resolve_model_path

logger = logging.getLogger(__name__)


def export(cfg: RunConfig) -> Path | str:
    """Merge `adapter_name_or_path` into `model_name_or_path` and save it to `export_dir`.

    Shards are at most `export_size` GB; `export_legacy_format` writes .bin instead of safetensors.
    The `_SUCCESS` marker (`kubetune.export_marker`) is removed before the first file and written after the
    last, so a killed export is never registered. An `s3://` export_dir is written locally first, then
    uploaded with S3's own marker last. Returns the export location.
    """
    if cfg.model.quantization_bit is not None:
        raise ValueError("refusing to merge into a quantised base: remove quantization_bit "
                         "(export loads the base in full precision and merges the adapter into it)")
    target = cfg.export.export_dir
    assert target, "export_dir is required (checked by preflight)"
    defer_deepspeed_import()  # save_pretrained unwraps the model; a merge never needs DeepSpeed
    path = resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(cfg.model, path)
    # rope_scaling: sized for cutoff_len when it is not the default, else factor 2, as LLaMA-Factory's export
    default_length = type(cfg.data).model_fields["cutoff_len"].default
    length = cfg.data.cutoff_len if cfg.data.cutoff_len != default_length else None
    model = load_base_model(cfg.model, path=path, quantize=False, model_max_length=length, tokenizer=tokenizer)
    # is_trainable=False merges every adapter in order into the base weights
    model = prepare_for_training(model, cfg.model, cfg.method, is_trainable=False, gradient_checkpointing=False)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.config.use_cache = True
    if target.startswith("s3://"):
        from kubetune.storage import upload_dir

        with tempfile.TemporaryDirectory() as tmp:
            _save(model, tokenizer, Path(tmp), cfg)
            upload_dir(Path(tmp), target)
        logger.info("exported merged model to %s", target)
        return target
    out = Path(target)
    _save(model, tokenizer, out, cfg)
    logger.info("exported merged model to %s", out)
    return out


def _save(model, tokenizer, out: Path, cfg: RunConfig) -> None:  # noqa: ANN001
    from kubetune.export_marker import clear_marker, mark_complete

    out.mkdir(parents=True, exist_ok=True)
    clear_marker(out)  # an earlier export's marker must not vouch for this one's half-written files
    model.save_pretrained(out, max_shard_size=f"{cfg.export.export_size}GB")
    tokenizer.save_pretrained(out)
    if cfg.export.export_legacy_format:
        to_legacy_format(out)
    mark_complete(out)  # last: register refuses a folder without it


def to_legacy_format(out: Path) -> None:
    """Rewrite safetensors shards as PyTorch .bin shards for old loaders.

    transformers 5 only writes safetensors, so the legacy format is a conversion afterwards.
    """
    import json

    import torch
    from safetensors.torch import load_file

    def legacy_name(name: str) -> str:
        return name.replace("model", "pytorch_model", 1).replace(".safetensors", ".bin")

    for shard in sorted(out.glob("*.safetensors")):
        torch.save(load_file(shard), out / legacy_name(shard.name))
        shard.unlink()
    index = out / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = {k: legacy_name(v) for k, v in data["weight_map"].items()}
        (out / "pytorch_model.bin.index.json").write_text(json.dumps(data, indent=2))
        index.unlink()
