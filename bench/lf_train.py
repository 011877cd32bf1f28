"""One LLaMA-Factory training run, measured the way bench.run_one measures kubetune and TRL.

Runs under LLaMA-Factory's own python (its venv pins transformers 4.x, which kubetune's does not
share), so it imports nothing from kubetune or from the rest of bench/:

    $LLAMAFACTORY_PYTHON bench/lf_train.py CONFIG.yaml RESULT.json

It calls LLaMA-Factory's `run_exp` (what `llamafactory-cli train` calls) with one extra callback,
which hooks the decoder's forward to count real tokens: an attention mask's non-zero entries
(a 2-D mask's non-zero entries; with neat packing, the diagonal of LLaMA-Factory's 4-D block mask),
and times the train loop in wall and CPU seconds. LLaMA-Factory's own `num_input_tokens_seen`
counts padding too, so it is not used.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import torch
import yaml
from transformers import TrainerCallback


def _decoder(model):  # noqa: ANN001, ANN202 - a PEFT or plain causal LM
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(inner, getattr(inner, "base_model_prefix", "model"), inner)


class RealTokenMeter(TrainerCallback):
    def __init__(self) -> None:
        self.tokens = 0
        self.losses: list[float] = []
        self.hooked = False
        self.start = self.end = self.cpu_start = self.cpu_end = 0.0

    def _count(self, module, args, kwargs) -> None:  # noqa: ANN001
        if not module.training:
            return
        mask = kwargs.get("attention_mask")
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if mask is not None and mask.dim() == 4:
            # neat packing: a [B, 1, L, L] mask; a real token may attend to itself (0.0 in the additive
            # float mask, True in a boolean one), a padding row is masked out entirely
            diagonal = mask.diagonal(dim1=-2, dim2=-1)[:, 0]
            self.tokens += int(diagonal.sum() if diagonal.dtype == torch.bool else (diagonal == 0).sum())
        elif mask is not None:
            self.tokens += int((mask != 0).sum())
        elif input_ids is not None:
            self.tokens += int(input_ids.numel())

    def on_train_begin(self, args, state, control, model=None, **kwargs):  # noqa: ANN001, ANN201
        if model is not None and not self.hooked:
            _decoder(model).register_forward_pre_hook(self._count, with_kwargs=True)
            self.hooked = True
        self.start, self.cpu_start = time.perf_counter(), time.process_time()

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001, ANN201
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        self.end, self.cpu_end = time.perf_counter(), time.process_time()


def _stand_in_for_torchaudio() -> None:
    """LLaMA-Factory imports torchaudio at module level (llamafactory/data/mm_plugin.py) and calls it
    only to decode audio inputs. No torchaudio build matches torch 2.13 (the newest on PyPI is 2.11,
    whose compiled library does not load against torch 2.13), so when it is missing an empty module
    stands in for it: the text-only training measured here never calls it."""
    import importlib.util
    import types

    if importlib.util.find_spec("torchaudio") is None:
        sys.modules["torchaudio"] = types.ModuleType("torchaudio")


def _model_for_transformers4(model_dir: str, work: Path) -> str:
    """The model folder as transformers 4.x can read it: a folder of links to the same files, except a
    tokenizer_config.json that names `PreTrainedTokenizerFast` (it reads the same tokenizer.json)
    where transformers 5 wrote its `TokenizersBackend`, a class 4.x does not have."""
    source = Path(model_dir)
    tokenizer_config = json.loads((source / "tokenizer_config.json").read_text())
    if tokenizer_config.get("tokenizer_class") != "TokenizersBackend":
        return model_dir
    target = work / "model-for-transformers4"
    target.mkdir(parents=True, exist_ok=True)
    for file in source.iterdir():
        link = target / file.name
        if file.name != "tokenizer_config.json" and not link.exists():
            link.symlink_to(file.resolve())
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    (target / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return str(target)


def _time_preprocessing() -> dict[str, float]:
    """Time LLaMA-Factory's `get_dataset` (load, template, tokenise, mask, pack) inside its SFT workflow."""
    from llamafactory.train.sft import workflow

    timing: dict[str, float] = {}
    get_dataset = workflow.get_dataset

    def timed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        start = time.perf_counter()
        result = get_dataset(*args, **kwargs)
        timing["seconds"] = time.perf_counter() - start
        return result

    workflow.get_dataset = timed
    return timing


def main(config_path: str, result_path: str) -> None:
    _stand_in_for_torchaudio()
    from llamafactory.train.tuner import run_exp

    config = yaml.safe_load(Path(config_path).read_text())
    config["model_name_or_path"] = _model_for_transformers4(config["model_name_or_path"], Path(result_path).parent)
    meter = RealTokenMeter()
    preprocess = _time_preprocessing()
    run_exp(config, callbacks=[meter])
    runtime = meter.end - meter.start
    steps = int(config["max_steps"])
    tail = meter.losses[-5:]
    Path(result_path).write_text(json.dumps({
        "tokens": meter.tokens, "runtime_s": runtime, "tokens_per_s": meter.tokens / runtime if runtime else 0.0,
        "step_time_s": runtime / steps, "cpu_s_per_step": (meter.cpu_end - meter.cpu_start) / steps,
        "steps": steps, "final_loss": sum(tail) / len(tail) if tail else float("nan"), "losses": meter.losses,
        "preprocess_s": preprocess.get("seconds"),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
    }))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
