"""Preflight: can this command run with this config, here? Checked before any model is loaded.

`kubetune.config` judges the config alone; here we ask the world: do the datasets resolve and
hold the stage's kind of data, does the template exist, is output_dir safe to write, do the model,
adapter and reward-model paths exist, are the kernels installed. Every problem at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from kubetune.config.errors import ConfigError, Problem
from kubetune.config.schema import RunConfig
from kubetune.validate.rules import stage_problems

Command = Literal["train", "eval", "benchmark", "export", "chat"]


def preflight(cfg: RunConfig, command: Command) -> None:
    """Raise ConfigError listing every reason `command` cannot run with `cfg` (see `world_problems`)."""
    problems = world_problems(cfg, command)
    if problems:
        raise ConfigError(problems, cfg.source)


def purpose(cfg: RunConfig) -> Command:
    """What a config is for, read from its keys, so `kubetune validate` checks it as what it is.

    LLaMA-Factory runs one CLI for every job and tells them apart by keys, so its merge and inference configs
    carry no command: one with `export_dir` is an export (merge_lora), one with `infer_backend` and no `stage` is
    chat (inference), one that evaluates or predicts and does not train (`do_train: false`, or no training
    dataset) is eval; anything else trains.
    """
    if cfg.export.export_dir:  # its value, not its presence: a round-tripped config (`to_flat`) holds every key
        return "export"
    if cfg.benchmark.task or cfg.benchmark.lm_eval_tasks:  # `llamafactory-cli eval` configs; lm-eval suites
        return "benchmark"
    if "infer_backend" in cfg.explicit and "stage" not in cfg.explicit:
        return "chat"
    t, d = cfg.train, cfg.data
    # LLaMA-Factory's predict configs name an eval_dataset and no dataset, and leave do_train at its false default
    no_training = t.do_train is False or (t.do_train is None and not (d.dataset or d.data_path))
    if no_training and (t.do_eval or t.do_predict):
        return "eval"
    return "train"


def world_problems(cfg: RunConfig, command: Command) -> list[Problem]:
    """Every reason `command` cannot run with `cfg` on this machine; empty when it can.

    Args:
        cfg: a config `kubetune.config.load_config` accepted.
        command: what is about to run: train, eval, export or chat (each needs different files).
    """
    problems: list[Problem] = []
    origin = _Origins(cfg)
    problems += _model_path(cfg, origin)
    if command in ("train", "eval", "benchmark"):
        problems += _template(cfg, origin)
    if command == "benchmark":
        problems += _benchmark(cfg, origin)
    if command == "train":
        problems += _train(cfg, origin)
    if command == "eval":
        problems += _datasets(cfg, origin, cfg.data.eval_dataset or cfg.data.dataset, "eval_dataset")
        if not (cfg.data.eval_dataset or cfg.data.dataset or cfg.data.data_path):
            problems.append(Problem("eval_dataset", None, origin("eval_dataset"), "evaluation needs data",
                                    "set eval_dataset (or dataset)"))
    if command == "export":
        problems += _export(cfg, origin)
    return problems + stage_problems(cfg)


def _benchmark(cfg: RunConfig, origin: _Origins) -> list[Problem]:
    """The task folder reads: mapping.json and every subject's CSV files (an s3:// task_dir is read when run)."""
    from kubetune.evaluate.benchmark_data import BenchmarkDataError, read_benchmark

    b = cfg.benchmark
    include = b.lm_eval_include_path
    if include and "://" not in include and not Path(include).is_dir():
        return [Problem("lm_eval_include_path", include, origin("lm_eval_include_path"), "is not a folder",
                        "give the folder of your lm-eval task YAMLs (or an s3:// prefix)")]
    if not b.task or b.task_dir.startswith("s3://"):
        return []
    try:
        read_benchmark(b.task_dir, b.task)
    except BenchmarkDataError as err:
        return [Problem("task", b.task, origin("task"), str(err), "")]
    if b.save_dir and Path(b.save_dir).exists():
        return [Problem("save_dir", b.save_dir, origin("save_dir"), "exists already (results are never overwritten)",
                        "choose a new folder, or remove it")]
    return []


class _Origins:
    """Where a key's value came from, for a problem to name: the file, the command line, a pipeline section.

    A key the user did not set is missing from the file they are editing, so the problem names that file
    (or the command line when there is none) rather than "defaults".
    """

    def __init__(self, cfg: RunConfig) -> None:
        self._cfg = cfg

    def __call__(self, key: str) -> str:
        return self._cfg.origins.get(key) or self._cfg.source or "command line"


def _model_path(cfg: RunConfig, origin: _Origins) -> list[Problem]:
    name = cfg.model.model_name_or_path
    looks_local = name.startswith(("/", "./", "../", "~"))
    problems = []
    if looks_local and not Path(name).expanduser().exists():
        problems.append(Problem("model_name_or_path", name, origin("model_name_or_path"), "no such directory",
                                "check the path"))
    if cfg.model.gguf_file and Path(name).is_dir() and not (Path(name) / cfg.model.gguf_file).is_file():
        problems.append(Problem("gguf_file", cfg.model.gguf_file, origin("gguf_file"), f"not found in {name}",
                                "check the file name"))
    for adapter in cfg.model.adapter_name_or_path or []:
        if not adapter.startswith("s3://") and not (Path(adapter) / "adapter_config.json").is_file():
            problems.append(Problem("adapter_name_or_path", adapter, origin("adapter_name_or_path"),
                                    "not a PEFT adapter directory (no adapter_config.json)",
                                    "point it at a trained adapter's output_dir"))
    return problems


def _template(cfg: RunConfig, origin: _Origins) -> list[Problem]:
    from kubetune.data.named_templates import MULTIMODAL_REFUSAL, MULTIMODAL_TEMPLATES
    from kubetune.data.template_registry import TEMPLATE_NAMES

    name = cfg.data.template
    if name is None:
        return []
    if name in MULTIMODAL_TEMPLATES:
        return [Problem("template", name, origin("template"), f"a multimodal model's template: {MULTIMODAL_REFUSAL}",
                        "kubetune trains text models; use the family's text template if it has one")]
    if name == "custom":
        if not cfg.data.template_file or not Path(cfg.data.template_file).is_file():
            return [Problem("template_file", cfg.data.template_file, origin("template_file"),
                            "template: custom needs an existing template_file", "point it at a template YAML")]
        return []
    if name not in TEMPLATE_NAMES:
        import difflib

        close = difflib.get_close_matches(name, TEMPLATE_NAMES, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(sorted(TEMPLATE_NAMES))}"
        return [Problem("template", name, origin("template"), "unknown template",
                        hint + " (or null for the tokenizer's own)")]
    return []


def _datasets(cfg: RunConfig, origin: _Origins, names: list[str] | None, key: str) -> list[Problem]:
    from kubetune.data.registry import DataError, resolve_datasets

    try:
        resolve_datasets(names, cfg.data.dataset_dir, cfg.data.data_path if key == "dataset" else None)
    except DataError as err:
        return [Problem(key, ",".join(names or []), origin(key), str(err))]
    return []


def _train(cfg: RunConfig, origin: _Origins) -> list[Problem]:
    problems: list[Problem] = []
    t = cfg.train
    if t.do_train is not False:
        if not (cfg.data.dataset or cfg.data.data_path):
            problems.append(Problem("dataset", None, origin("dataset"), "training needs data",
                                    "set dataset (names in dataset_info.json, or a file path) or data_path"))
        else:
            problems += _datasets(cfg, origin, cfg.data.dataset, "dataset")
    if cfg.data.eval_dataset:
        problems += _datasets(cfg, origin, cfg.data.eval_dataset, "eval_dataset")
    if not t.output_dir:
        problems.append(Problem("output_dir", None, origin("output_dir"), "is required",
                                "set output_dir: saves/my-run"))
        return problems
    out = Path(t.output_dir)
    has_files = out.is_dir() and any(out.iterdir())
    has_checkpoint = out.is_dir() and any(p.name.startswith("checkpoint-") for p in out.iterdir())
    if has_files and not has_checkpoint and not t.overwrite_output_dir and not t.resume_from_checkpoint and (
            t.do_train is not False):
        problems.append(Problem("output_dir", t.output_dir, origin("output_dir"),
                                "is not empty and holds no checkpoint to resume from",
                                "choose a new output_dir, or set overwrite_output_dir: true"))
    if t.resume_from_checkpoint and not Path(t.resume_from_checkpoint).is_dir():
        problems.append(Problem("resume_from_checkpoint", t.resume_from_checkpoint, origin("resume_from_checkpoint"),
                                "no such checkpoint",
                                "point it at a checkpoint-N folder, or remove it to resume automatically"))
    return problems


def _export(cfg: RunConfig, origin: _Origins) -> list[Problem]:
    problems = []
    if not cfg.export.export_dir:
        problems.append(Problem("export_dir", None, origin("export_dir"), "is required",
                                "set export_dir: models/my-model"))
    if cfg.model.quantization_bit is not None:
        problems.append(Problem("quantization_bit", cfg.model.quantization_bit, origin("quantization_bit"),
                                "cannot merge an adapter into a quantised base (the merge would be rounded away)",
                                "remove quantization_bit: export loads the base unquantised and merges into it"))
    return problems
