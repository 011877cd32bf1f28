"""Which config values are secrets, and how they are kept out of messages, MLflow and compiled pipelines.

A secret key (`hf_hub_token`, LLaMA-Factory's `ms_hub_token`/`om_hub_token`, SwanLab's `*_api_key` and
`*_secret`, ...) is shown as `<redacted>` in every error and warning; `hf_hub_token` is a pydantic
`SecretStr`, so `RunConfig.to_flat()` (what MLflow logs as params) holds `**********`. A pipeline config
is compiled in clear into the pipeline YAML and handed to every step (whose logs print their inputs), so
it may hold no secret at all: `pipeline_secret_problems` refuses them there, with where to put them
instead. A password inside a URL (`https://user:pass@host`) is refused everywhere, for the same reasons.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from kubetune.config.errors import Problem
from kubetune.config.secret_keys import REDACTED, is_secret_key

__all__ = ["REDACTED", "is_secret_key", "pipeline_secret_problems", "url_password", "url_password_problems"]
URL_HINT = ("take the credentials out of the URL: MLflow reads MLFLOW_TRACKING_USERNAME/PASSWORD from the environment "
            "(in a pipeline, from mlflow.credentials_secret); kubetune's HTTP reward source sends no credentials, "
            "so serve a reward endpoint on a private address")
SECRET_HINT = ("remove it from the config: give it to the steps as an environment variable from a Kubernetes "
               "secret (HF_TOKEN for the Hugging Face hub, which transformers reads, from the `hf-credentials` "
               "secret or another one named in env_secrets; MLFLOW_TRACKING_USERNAME/PASSWORD in "
               "mlflow.credentials_secret; AWS_* in s3.credentials_secret)")


def url_password(value: Any) -> bool:
    """Whether `value` is a URL with a password in it (`scheme://user:password@host`)."""
    if not isinstance(value, str) or "://" not in value or "@" not in value:
        return False
    try:
        return bool(urlsplit(value).password)
    except ValueError:
        return False


def url_password_problems(values: Mapping[str, Any], origin: str, where: str = "") -> list[Problem]:
    """A problem for each value (nested too) that is a URL holding a password."""
    return [Problem(f"{where}{key}", None, origin, "holds a password in its URL, which would be logged (MLflow "
                    "params, step logs, the compiled pipeline)",
                    URL_HINT)
            for key, value in _walk(values) if url_password(value)]


def pipeline_secret_problems(sections: Mapping[str, Mapping[str, Any]], origin: str) -> list[Problem]:
    """Secret keys with a value anywhere in a pipeline config (the top level is section ""), and URL passwords."""
    problems = []
    for section, values in sections.items():
        where = f"{section}." if section else ""
        for key, value in _walk(values):
            if is_secret_key(key) and value not in (None, ""):
                problems.append(Problem(f"{where}{key}", None, origin,
                                        "is a secret, and a pipeline config is compiled in clear into the pipeline "
                                        "YAML and handed to every step, whose logs print it", SECRET_HINT))
        problems += url_password_problems(values, origin, where)
    return problems


def _walk(values: Mapping[str, Any], prefix: str = "", depth: int = 0) -> Iterator[tuple[str, Any]]:
    # bounded depth: a self-referring value is `config_text.shape_problem`'s to report, not a reason to recurse
    for key, value in values.items():
        name = f"{prefix}{key}"
        yield name, value
        if isinstance(value, Mapping) and depth < 8:
            yield from _walk(value, f"{name}.", depth + 1)
