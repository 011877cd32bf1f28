"""`kubetune` command line: train, eval, export, chat, validate, keys.

Every command validates the whole config (and what the command needs from the filesystem)
before loading a model, and prints every problem at once.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence

from kubetune import __version__
from kubetune.config import ConfigError, RunConfig, load_config
from kubetune.validate import preflight, purpose

USAGE = """kubetune <command> [config.yaml] [key=value | --key value ...]

commands:
  train     run the configured stage (sft, pt, rm, dpo, kto, ppo): train, then evaluate/predict if asked
  eval      loss/perplexity and generation metrics (BLEU-4, ROUGE) on a dataset, as JSON; with `task`
            (e.g. mmlu_test) a multiple-choice benchmark, as a table [--json]
  export    merge the adapter into the base and save safetensors shards (export_dir)
  chat      talk to a model (+ adapter) in the terminal
  validate  check a config and the files it names, as the job its keys describe (train, export with
            export_dir, chat with infer_backend and no stage, eval with do_train: false), running nothing;
            a pipeline config: every step of its DAG, as `kubetune run` checks it first
  estimate  peak GPU memory per device and which GPUs fit, from the model config alone [--json]

pipeline commands (a pipeline config: see examples/pipeline_sft.yaml):
  run       run the whole DAG here through kfp.local      kubetune run pipeline.yaml [--output DIR] [--alignment X]
  compile   write the KFP pipeline YAML                    kubetune compile pipeline.yaml -o out.yaml
  submit    upload (or version) and start a run            kubetune submit pipeline.yaml --host URL [--experiment X]
  schedule  a recurring (retraining) run                 kubetune schedule pipeline.yaml --host URL --cron "0 0 3 * * 0"
  promote   move the champion alias by the gate metric     kubetune promote pipeline.yaml --version N [--force]

  keys      list every config key with its default and meaning
  version   print the version

Config keys use LLaMA-Factory's names; see examples/ and `kubetune keys`.
"""


PIPELINE_COMMANDS = ("run", "compile", "submit", "schedule", "promote")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "version":
        print(__version__)
        return 0
    if command == "keys":
        return _print_keys()
    if command == "estimate":
        from kubetune.estimate import estimate_command

        return estimate_command(rest)
    if command in PIPELINE_COMMANDS:
        logging.basicConfig(level=logging.INFO, format="[%(levelname)s|%(name)s] %(message)s")
        from kubetune.pipeline_cli import pipeline_command

        return pipeline_command(command, rest)
    if command not in ("train", "eval", "export", "chat", "validate"):
        print(f"kubetune: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    if "-h" in rest or "--help" in rest:  # `kubetune train [x.yaml] --help`: the usage, not a config key
        print(USAGE)
        return 0
    # under torchrun every rank runs this: the others log warnings only, so each line appears once
    level = logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING
    logging.basicConfig(level=level, format="[%(levelname)s|%(name)s] %(message)s")
    as_json = command == "eval" and "--json" in rest  # a benchmark prints a table, or its JSON with --json
    rest = [arg for arg in rest if not (as_json and arg == "--json")]
    path = rest[0] if rest and not rest[0].startswith("-") and "=" not in rest[0] else None
    overrides = rest[1:] if path else rest
    if command == "validate" and path and _is_pipeline_config(path):
        if overrides:  # `kubetune run` takes none either: what validate checks is what run would run
            print(f"kubetune validate: {path} is a pipeline config, which takes no key=value overrides "
                  f"(got {' '.join(overrides)}); set them in the file, under `stages.<stage>:` for one stage",
                  file=sys.stderr)
            return 2
        return _validate_pipeline(path)
    try:
        cfg = _load(command, path, overrides)
    except ConfigError as err:
        print(f"kubetune {command}: {err}", file=sys.stderr)
        return 2
    if command == "train":
        launched = _launch_ranks(cfg, rest)
        if launched is not None:
            return launched
    if command == "eval" and (cfg.benchmark.task or cfg.benchmark.lm_eval_tasks):
        return _benchmarks(cfg, as_json)
    return _dispatch(command, cfg)


def _benchmarks(cfg: RunConfig, as_json: bool) -> int:
    from kubetune.evaluate.suites import run_suites

    try:
        result = run_suites(cfg)
    except (ValueError, FileExistsError) as err:  # a task not found, a bad row, save_dir taken: said before loading
        print(f"kubetune eval: {err}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return 0
    if "benchmark" in result:
        bench = result["benchmark"]
        print(f"{bench['task']}: {bench['questions']} questions, {bench['n_shot']}-shot, lang {bench['lang']}")
        print(f"{'':>15}  accuracy %")
        for name, value in bench["categories"].items():
            print(f"{name:>15}: {value:6.2f}")
    if "lm_eval" in result:
        metrics = result["lm_eval"]["metrics"]
        print("lm-eval:")
        for name, value in metrics.items():
            if not name.endswith("_stderr"):
                stderr = metrics.get(f"{name}_stderr")
                print(f"  {name}: {value:.4f}" + (f" ± {stderr:.4f}" if stderr is not None else ""))
    return 0


def _launch_ranks(cfg: RunConfig, args: Sequence[str]) -> int | None:
    """Re-run `kubetune train` under torchrun when asked or given several GPUs; its exit code, or None."""
    from kubetune.launch.torchrun import LaunchError, run_torchrun, torchrun_plan

    try:
        plan = torchrun_plan(force=bool(cfg.train.deepspeed))  # DeepSpeed wants a launcher, even for one rank
    except LaunchError as err:
        print(f"kubetune train: {err}", file=sys.stderr)
        return 2
    if plan is None:
        return None
    from kubetune.train.preemption import PREEMPTED_EXIT_CODE, clear_preempted_marker, was_preempted

    print(f"kubetune train: launching torchrun: {plan.describe()}", file=sys.stderr, flush=True)
    clear_preempted_marker(cfg.train.output_dir)
    code = run_torchrun(plan, ["train", *args], shutdown_timeout=cfg.train.save_on_sigterm_grace)
    if code != 0 and was_preempted(cfg.train.output_dir):  # torchrun's own code after a SIGTERM is not the ranks'
        print(f"kubetune train: pre-empted (SIGTERM): the ranks saved a checkpoint in {cfg.train.output_dir}; "
              f"run the same command again to resume (exit code {PREEMPTED_EXIT_CODE})", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    return code


def _load(command: str, path: str | None, overrides: Sequence[str]) -> RunConfig:
    defaults = {"train": {}, "validate": {}, "export": {}, "chat": {"do_train": False},
                "eval": {"do_train": False, "do_eval": True, "do_predict": True}}[command]
    if command == "eval" and _names_a_task(path, overrides):
        defaults = {"do_train": False}  # a benchmark reads its task folder, not a held-out split
    # command defaults go last so that `kubetune eval train.yaml` evaluates instead of retraining
    cfg = load_config(path, list(overrides) + [f"{k}={json.dumps(v)}" for k, v in defaults.items()])
    if command == "eval" and (cfg.benchmark.task or cfg.benchmark.lm_eval_tasks):  # benchmarks, not a split
        preflight(cfg, "benchmark")
        return cfg
    if command == "eval" and not cfg.data.eval_dataset and cfg.data.dataset:
        cfg.data.eval_dataset, cfg.data.val_size = cfg.data.dataset, 0.0
    # `validate` checks a config as what it is for: an LLaMA-Factory merge config as an export, and so on
    preflight(cfg, purpose(cfg) if command == "validate" else command)  # type: ignore[arg-type]
    return cfg


def _is_pipeline_config(path: str) -> bool:
    """Whether the file is a pipeline config (`pipeline:` or `stages:` at the top), not one stage's."""
    from pathlib import Path

    from kubetune.config.loader import read_config_file

    try:
        data = read_config_file(Path(path))
    except ConfigError:
        return False  # the stage path reports what is wrong with the file
    return "pipeline" in data or "stages" in data


def _validate_pipeline(path: str) -> int:
    """`kubetune validate pipeline.yaml`: every step of the DAG checked as `kubetune run` checks it first."""
    from kubetune.config.pipeline import load_pipeline_config
    from kubetune.validate import preflight_pipeline

    try:
        cfg = load_pipeline_config(path)
        preflight_pipeline(cfg)
    except ConfigError as err:
        print(f"kubetune validate: {err}", file=sys.stderr)
        return 2
    print(f"{path}: OK — pipeline {cfg.pipeline} ({cfg.name}): {', '.join(cfg.stages_to_validate())}, then "
          f"evaluate, export, register, promote ({cfg.promotion.registered_model})")
    return 0


def _names_a_task(path: str | None, overrides: Sequence[str]) -> bool:
    """Whether the file or the command line names a benchmark (`task`, `lm_eval_tasks`), before validation."""
    from pathlib import Path

    from kubetune.config.loader import parse_overrides, read_config_file

    given = {**(read_config_file(Path(path)) if path else {}), **parse_overrides(list(overrides), [])}
    return bool(given.get("task") or given.get("lm_eval_tasks"))


def _dispatch(command: str, cfg: RunConfig) -> int:
    if command == "validate":
        what = purpose(cfg)
        job = (f"stage {cfg.method.stage}" if what == "train" else
               f"export to {cfg.export.export_dir}" if what == "export" else what)
        print(f"{cfg.source or 'config'}: OK — {job}, {cfg.method.finetuning_type}"
              f"{' (4-bit)' if cfg.model.quantization_bit == 4 else ''}, model {cfg.model.model_name_or_path}")
        return 0
    if command in ("train", "eval"):
        from kubetune.stages import run_stage
        from kubetune.train.preemption import PREEMPTED_EXIT_CODE, Preempted, clear_preempted_marker
        from kubetune.train.world import is_main_process

        if is_main_process():  # a previous run's pre-emption is not this one's (rank 0 writes it again if so)
            clear_preempted_marker(cfg.train.output_dir)
        try:
            result = run_stage(cfg)
        except Preempted as err:
            if is_main_process():
                print(f"kubetune {command}: {err}", file=sys.stderr, flush=True)
            return PREEMPTED_EXIT_CODE
        except ConfigError as err:  # found where the stage starts (output_dir not writable, disk too small)
            if is_main_process():
                print(f"kubetune {command}: {err}", file=sys.stderr, flush=True)
            return 2
        if not is_main_process():  # every rank returns; one prints
            return 0
        print(json.dumps({"output_dir": str(result.output_dir), "metrics": result.metrics, "files": result.files},
                         indent=2))
        return 0
    if command == "export":
        from kubetune.export import export

        print(f"exported to {export(cfg)}")
        return 0
    from kubetune.chat import chat

    chat(cfg)
    return 0


def _print_keys() -> int:
    from kubetune.config.schema import GROUPS

    for group, model in GROUPS.items():
        print(f"# {group}")
        for name, info in model.model_fields.items():
            default = "required" if info.is_required() else repr(info.default)
            print(f"  {name:32} {default:16} {info.description or ''}")
    from kubetune.config.refused_keys import IGNORED, NO_EFFECT, REFUSED

    print("# LLaMA-Factory keys accepted, nothing to do (why)")
    for name, why in NO_EFFECT.items():
        print(f"  {name:32} {why}")
    print("# LLaMA-Factory keys accepted and not used, with a warning (why)")
    for name, ignored in IGNORED.items():
        print(f"  {name:32} {ignored.reason}")
    print("# LLaMA-Factory keys refused unless at LLaMA-Factory's default (default, why)")
    for name, refusal in REFUSED.items():
        print(f"  {name:32} {refusal.default!r:16} {refusal.reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
