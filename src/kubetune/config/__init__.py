"""Configuration: one typed schema in LLaMA-Factory's names, validated before any work starts."""

from kubetune.config.errors import ConfigError, Problem
from kubetune.config.loader import load_config, parse_overrides
from kubetune.config.schema import (
    BenchmarkArguments,
    DataArguments,
    ExportArguments,
    FinetuningArguments,
    GeneratingArguments,
    ModelArguments,
    RunConfig,
    TrainArguments,
)

__all__ = [
    "ConfigError", "Problem", "load_config", "parse_overrides", "RunConfig", "ModelArguments",
    "FinetuningArguments", "DataArguments", "TrainArguments", "GeneratingArguments", "ExportArguments",
    "BenchmarkArguments",
]
