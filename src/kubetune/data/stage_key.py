"""The preprocess step's cache key, before it runs: the key `pipeline.tokenized` will compute for it.

`kubetune compile` sets each preprocess step's KFP cache key to this, so a cluster reuses a cached
step exactly when the step would produce the same rows: editing a dataset or a `template_file`,
changing the tokenizer or upgrading kubetune gives a new key.

Where compile time cannot see an input the step will see, the key names that input instead of
hashing it and a `CacheKeyWarning` says so (the step then runs again only when the name changes):

- the tokenizer: an `s3://` model (fetching it would fetch the weights too), a hub id without a
  network, or the embedded model before its one-time conversion on this machine;
- the data: a dataset or file that does not exist here (the key covers the settings only).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from kubetune.config import RunConfig
from kubetune.data.cache_key import data_key, tokenizer_fingerprint
from kubetune.data.pipeline import stage_datasets
from kubetune.data.registry import DataError, DatasetAttr


class CacheKeyWarning(UserWarning):
    """A preprocess step's cache key names an input it could not hash at compile time (see the module)."""


@dataclass
class PreprocessKey:
    """Attributes:
    key: the KFP cache key: `DataKey.key` of the rows the step will build.
    warnings: what the key only names instead of hashing (each also raised as a `CacheKeyWarning`).
    """

    key: str
    warnings: list[str] = field(default_factory=list)


def preprocess_splits(cfg: RunConfig) -> tuple[bool, bool]:
    """(train, evaluate): the splits the pipeline's preprocess step builds for a stage.

    Args:
        cfg: the stage's run config; an eval split is built for `do_eval`, evaluation during training, or
            `do_predict` (the training step reads the same held-out rows as the stage alone would).
    """
    return True, cfg.train.needs_eval_split


def preprocess_cache_key(cfg: RunConfig, stage: str) -> PreprocessKey:
    """The cache key the preprocess step of `stage` will compute, without running it.

    Args:
        cfg: the stage's run config (`PipelineConfig.stage_config`).
        stage: pt, sft, rm, dpo, kto or ppo.

    Returns:
        The key and the warnings about what it could not hash; the warnings are also raised as
        `CacheKeyWarning`s (`kubetune compile` shows them).
    """
    problems: list[str] = []
    train, evaluate = preprocess_splits(cfg)
    data = cfg.data
    try:
        train_attrs, eval_attrs = stage_datasets(data, train=train, evaluate=evaluate)
        attrs: list[DatasetAttr] = train_attrs + eval_attrs
    except DataError as err:
        attrs = []
        problems.append(f"its data cannot be read here ({err}); the key covers the data settings only, "
                        "so editing the data files will not rerun a cached step")
    tokenizer, template, why = _tokenizer_and_template(cfg)
    if why:
        problems.append(f"{why}; the key covers the tokenizer's name ({cfg.model.model_name_or_path}, revision "
                        f"{cfg.model.model_revision}) and the template's settings, not the files themselves, so "
                        "a changed tokenizer under the same name will not rerun a cached step")
    key = data_key(data, attrs, stage=stage, seed=cfg.train.seed, splits=(train, evaluate),
                   tokenizer=tokenizer, template=template).key
    messages = [f"preprocess-{stage} cache key: {problem}" for problem in problems]
    for message in messages:
        warnings.warn(CacheKeyWarning(message), stacklevel=2)
    return PreprocessKey(key, messages)


def _tokenizer_and_template(cfg: RunConfig) -> tuple[str, str, str]:
    """(tokenizer fingerprint, template fingerprint, "") as the preprocess step computes them; or stand-ins
    naming them and why the real ones could not be had here."""
    from kubetune.data.setup import tokenizer_and_template
    from kubetune.model.embedded import converted_embedded_model
    from kubetune.model.loader import ModelLoadError

    model = cfg.model
    name = model.model_name_or_path
    path: str | None = None
    why = ""
    if name.startswith("s3://"):
        why = f"the tokenizer is in {name}, which is not fetched at compile time (its weights would come with it)"
    elif _is_embedded(name):
        converted = converted_embedded_model()  # converting dequantises the whole model: not at compile time
        if converted is None:
            why = ("the embedded model is not converted on this machine yet (the first run converts it, "
                   "about a minute)")
        else:
            path = str(converted)
    if not why:
        try:
            tokenizer, template = tokenizer_and_template(cfg, path)
            return tokenizer_fingerprint(tokenizer), repr(template), ""
        except (ModelLoadError, OSError, ValueError) as err:
            why = f"the tokenizer or template could not be loaded here ({err})"
    stand_in = json.dumps({"model_name_or_path": name, "model_revision": model.model_revision,
                           "gguf_file": model.gguf_file, "use_fast_tokenizer": model.use_fast_tokenizer,
                           # the tokens load_tokenizer adds change the ids (a file's tokens: by its bytes)
                           "add_tokens": model.add_tokens, "add_special_tokens": model.add_special_tokens,
                           "new_special_tokens_config": _file_or_name(model.new_special_tokens_config)})
    data = cfg.data
    template = json.dumps({"template": data.template, "default_system": data.default_system,
                           "tool_format": data.tool_format,
                           "enable_thinking": data.enable_thinking, "preserve_thinking": data.preserve_thinking})
    return stand_in, template, why


def _file_or_name(path: str | None) -> str | None:
    """A file's content digest where it is readable here, else its name (the step reads it where it runs)."""
    from kubetune.data.cache_key import file_digest

    return file_digest(Path(path)) if path and Path(path).is_file() else path


def _is_embedded(name: str) -> bool:
    from kubetune.model.embedded import is_embedded

    return is_embedded(name) and not Path(name).expanduser().is_dir()


