"""Compiled pipeline packages on a KFP backend: their identity, parameters, pipeline versions and experiments.

The first package for a pipeline name uploads a new pipeline (KFP names its first version after the
pipeline); every later package with different bytes becomes a new *version* of it, named `version_name`
or `<kubetune version>-<UTC time>-<sha256[:12]>`. Each upload's description records the package's sha256
(`kubetune-sha256=<hex>`): when the latest version already carries the package's hash, nothing is
uploaded, so CI re-runs and `helm upgrade` add no duplicate versions.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kfp
import yaml

from kubetune import __version__
from kubetune.launch.kfp_api import PAGE_SIZE, KfpBackendError, all_pages, api_call, client_url, name_filter

__all__ = ["HASH_MARKER", "PipelineVersion", "checked_package", "default_version_name", "ensure_experiment",
           "ensure_pipeline_version", "package_hash", "pipeline_parameters"]

HASH_MARKER = "kubetune-sha256="
_PACKAGE_SUFFIXES = (".yaml", ".yml", ".zip", ".tar.gz", ".tgz")  # what kfp.Client can upload


@dataclass(frozen=True)
class PipelineVersion:
    """The pipeline version a package maps to on the backend.

    Attributes:
        pipeline_id (`str`): the KFP pipeline id.
        version_id (`str`): the KFP pipeline version id.
        version_name (`str`): the version's name as the backend shows it.
        content_hash (`str`): sha256 of the package bytes.
        uploaded (`bool`): whether this call uploaded it (`False`: the latest version already had this hash).
    """

    pipeline_id: str
    version_id: str
    version_name: str
    content_hash: str
    uploaded: bool


def package_hash(package_path: str | Path) -> str:
    """sha256 (hex) of a compiled pipeline package's bytes: the identity used to skip duplicate uploads."""
    return hashlib.sha256(Path(package_path).read_bytes()).hexdigest()


def default_version_name(content_hash: str, now: datetime | None = None) -> str:
    """`<kubetune version>-<UTC YYYYmmdd-HHMMSS>-<sha256[:12]>`: sortable, and names the content.

    Args:
        content_hash (`str`): the package's sha256 hex digest.
        now (`datetime`, *optional*): the time to stamp; defaults to the current UTC time.
    """
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{__version__}-{stamp}-{content_hash[:12]}"


def pipeline_parameters(package_path: str | Path) -> dict[str, str]:
    """The parameters a compiled pipeline (KFP IR YAML) declares, with their KFP types.

    Args:
        package_path (`str` or `Path`): a `.yaml`/`.yml` file from `kfp.compiler.Compiler().compile(...)`.

    Returns:
        `dict[str, str]`: parameter name -> `parameterType` (`STRING`, `NUMBER_INTEGER`, ...).
    """
    with open(package_path, encoding="utf-8") as stream:
        spec = next(yaml.safe_load_all(stream), None) or {}  # a second document is the platform spec
    declared = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {}) or {}
    return {name: str(body.get("parameterType", "")) for name, body in declared.items()}


def ensure_pipeline_version(
    client: kfp.Client,
    package_path: str | Path,
    pipeline_name: str,
    *,
    version_name: str | None = None,
    namespace: str | None = None,
) -> PipelineVersion:
    """Make the package's content the latest version of `pipeline_name`, uploading only what is new.

    Args:
        client (`kfp.Client`): from [`kubetune.launch.kfp_api.connect`].
        package_path (`str` or `Path`): the compiled pipeline package.
        pipeline_name (`str`): the pipeline's name on the backend; it must be unique there.
        version_name (`str`, *optional*): the name of a new version; defaults to [`default_version_name`].
            Unused when the pipeline is new (KFP names the first version after the pipeline) or when the
            latest version already has this content.
        namespace (`str`, *optional*): the profile namespace for a new pipeline on a multi-user install.

    Returns:
        [`PipelineVersion`]: ids, name, hash and whether anything was uploaded.

    Raises:
        [`KfpBackendError`]: an API error, or several pipelines already share `pipeline_name`.
    """
    url = client_url(client)
    digest = package_hash(package_path)
    description = f"{HASH_MARKER}{digest} (kubetune {__version__})"
    pipeline_id = _find_pipeline(client, pipeline_name, namespace)
    if pipeline_id is None:
        with api_call(url, f"upload pipeline {pipeline_name!r}"):
            pipeline = client.upload_pipeline(
                str(package_path), pipeline_name=pipeline_name, description=description, namespace=namespace
            )
        first = _latest_version(client, pipeline.pipeline_id)
        if first is None:
            raise KfpBackendError(f"{url} created pipeline {pipeline_name!r} but lists no version of it")
        return PipelineVersion(pipeline.pipeline_id, first.pipeline_version_id, first.display_name, digest, True)
    latest = _latest_version(client, pipeline_id)
    if latest is not None and _recorded_hash(latest.description) == digest:
        return PipelineVersion(pipeline_id, latest.pipeline_version_id, latest.display_name, digest, False)
    name = version_name or default_version_name(digest)
    with api_call(url, f"upload version {name!r} of pipeline {pipeline_name!r}"):
        version = client.upload_pipeline_version(
            str(package_path), name, pipeline_id=pipeline_id, description=description
        )
    return PipelineVersion(pipeline_id, version.pipeline_version_id, version.display_name or name, digest, True)


def ensure_experiment(client: kfp.Client, name: str, namespace: str | None = None) -> str:
    """Get the experiment called `name`, creating it if missing; return its id.

    Args:
        client (`kfp.Client`): from [`kubetune.launch.kfp_api.connect`].
        name (`str`): the experiment's name.
        namespace (`str`, *optional*): the profile namespace on a multi-user install.
    """
    with api_call(client_url(client), f"get or create experiment {name!r}"):
        return client.create_experiment(name=name, namespace=namespace).experiment_id  # kfp: get-or-create

def _find_pipeline(client: kfp.Client, name: str, namespace: str | None) -> str | None:
    """The id of the pipeline called `name`, or `None`; several with that name is an error for a person."""
    with api_call(client_url(client), f"look up pipeline {name!r}"):
        found = all_pages(
            lambda token: client.list_pipelines(
                page_token=token, page_size=PAGE_SIZE, filter=name_filter(name), namespace=namespace
            ),
            "pipelines",
        )
    found = [pipeline for pipeline in found if pipeline.display_name == name]
    if len(found) > 1:
        ids = ", ".join(pipeline.pipeline_id for pipeline in found)
        raise KfpBackendError(
            f"{client_url(client)} has {len(found)} pipelines named {name!r} ({ids}); kubetune adds versions to one "
            f"pipeline per name — delete or rename the extra ones in the KFP UI, or choose another pipeline_name"
        )
    return found[0].pipeline_id if found else None


def _latest_version(client: kfp.Client, pipeline_id: str) -> Any | None:
    """The newest version of a pipeline (by creation time), or `None` if it has none."""
    with api_call(client_url(client), f"list versions of pipeline {pipeline_id}"):
        page = client.list_pipeline_versions(pipeline_id, page_size=1, sort_by="created_at desc")
    return (page.pipeline_versions or [None])[0]


def _recorded_hash(description: str | None) -> str | None:
    """The sha256 that kubetune wrote into a version's description, if any."""
    for word in (description or "").split():
        if word.startswith(HASH_MARKER):
            return word[len(HASH_MARKER):]
    return None


def checked_package(package_path: str | Path, params: Mapping[str, Any] | None) -> Path:
    """Fail before any request: the package must exist, be uploadable, and declare every parameter given.

    Args:
        package_path (`str` or `Path`): the compiled pipeline package.
        params (`Mapping[str, Any]`, *optional*): the pipeline parameters a run will be given.

    Returns:
        `Path`: the package's path.

    Raises:
        `ValueError`: the package is missing or not uploadable, or a parameter is not the pipeline's.
    """
    path = Path(package_path)
    if not path.is_file():
        raise ValueError(f"pipeline package {str(path)!r} not found; build it with `kubetune compile ... -o {path}`")
    if not path.name.endswith(_PACKAGE_SUFFIXES):
        raise ValueError(f"pipeline package {str(path)!r}: kfp uploads {', '.join(_PACKAGE_SUFFIXES)} files")
    if params and path.suffix in (".yaml", ".yml"):
        declared = pipeline_parameters(path)
        unknown = [name for name in params if name not in declared]
        if unknown:
            raise ValueError(_unknown_params_message(path, unknown, declared))
    return path


def _unknown_params_message(path: Path, unknown: list[str], declared: Mapping[str, str]) -> str:
    lines = [f"pipeline package {str(path)!r} has no parameter{'s' if len(unknown) > 1 else ''} {unknown}:"]
    for name in unknown:
        close = difflib.get_close_matches(name, list(declared), n=1)
        lines.append(f"  - {name}" + (f": did you mean {close[0]!r}?" if close else ""))
    lines.append(f"its parameters are: {', '.join(declared) or '(none)'}")
    return "\n".join(lines)
