"""The container images (images/runtime, images/trainer): lint, scan, and what they promise.

There is no Docker engine here, so the images are not built: the Dockerfiles are linted (hadolint), scanned
(checkov), and read — non-root numeric user, no ENTRYPOINT, caches on /cache/kubetune, pinned versions, no
secrets, a build context that admits only what they copy — and their names are checked against the ones the
compiled pipeline and the chart use.
"""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from deploy_conftest import CHART, DOCKERFILES, HADOLINT, INSTALL, ROOT, find, pipeline_config_text

import kubetune
from kubetune.config.pipeline import ModelCache, PipelineConfig

Instruction = tuple[str, str]  # (INSTRUCTION, arguments)


def instructions(path: Path) -> list[Instruction]:
    """A Dockerfile's instructions, continuation lines joined and comments dropped."""
    found: list[Instruction] = []
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        op, _, args = current.partition(" ")
        found.append((op.upper(), args.strip()))
        current = ""
    return found


def stages(path: Path) -> list[list[Instruction]]:
    """Instructions per build stage, each starting with its FROM."""
    out: list[list[Instruction]] = []
    for op, args in instructions(path):
        if op == "FROM":
            out.append([])
        out[-1].append((op, args))
    return out


def env_of(stage: list[Instruction]) -> dict[str, str]:
    found: dict[str, str] = {}
    for op, args in stage:
        if op == "ENV":
            found.update(re.findall(r"(\w+)=(\S+)", args))
    return found


def pyproject_pin(name: str) -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(d for d in deps if re.match(rf"{re.escape(name)}\s*==", d)).replace(" ", "")


KINDS = list(DOCKERFILES)


# --- lint and scan ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_hadolint_finds_nothing(kind: str) -> None:
    if not HADOLINT.is_file():
        pytest.fail(f"hadolint is not installed; run: {INSTALL['hadolint']}")
    result = subprocess.run([str(HADOLINT), "--format", "json", str(DOCKERFILES[kind])],
                            capture_output=True, text=True, timeout=60)
    assert json.loads(result.stdout or "[]") == [], result.stdout
    assert result.returncode == 0, result.stderr


def test_checkov_finds_nothing_in_the_dockerfiles(checkov_report) -> None:
    report = checkov_report["dockerfile"]
    failed = [f"{c['check_id']} {c['check_name']} — {c['file_path']}" for c in report["results"]["failed_checks"]]
    assert failed == []
    assert report["summary"]["parsing_errors"] == 0
    scanned = {c["file_path"] for c in report["results"]["passed_checks"]}
    assert scanned == {"/images/runtime/Dockerfile", "/images/trainer/Dockerfile"}


# --- what the images promise ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_no_entrypoint_and_a_numeric_non_root_user(kind: str) -> None:
    ops = [op for op, _ in instructions(DOCKERFILES[kind])]
    assert "ENTRYPOINT" not in ops and "CMD" not in ops  # KFP and the chart set the command
    final = stages(DOCKERFILES[kind])[-1]
    users = [args for op, args in final if op == "USER"]
    assert users, "the final stage must switch to a non-root user"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) >= 10000, f"USER {users[-1]}: numeric (runAsNonRoot) and not a host UID"
    assert gid.isdigit() and int(gid) != 0
    # the chart's pods run as the same user
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["containerSecurityContext"]["runAsUser"] == int(uid)
    assert values["podSecurityContext"]["runAsGroup"] == int(gid)


@pytest.mark.parametrize("kind", KINDS)
def test_caches_and_kfp_artifact_folders_are_writable_paths(kind: str) -> None:
    final = stages(DOCKERFILES[kind])[-1]
    env = env_of(final)
    assert env["KUBETUNE_CACHE"] == ModelCache().mount_path == "/cache/kubetune"  # where the model-cache PVC mounts
    assert env["HF_HOME"].startswith("/cache/kubetune/")
    setup = " ".join(args for op, args in final if op == "RUN")
    # KFP's launcher writes artifacts under /gcs, /minio and /s3: they must exist and belong to the user
    for folder in ("/cache/kubetune", "/gcs", "/minio", "/s3"):
        assert re.search(rf"mkdir -p [^&]*{folder}\b", setup) and re.search(rf"chown \S+ [^&]*{folder}\b", setup)


@pytest.mark.parametrize("kind", KINDS)
def test_base_images_are_pinned_and_multi_stage(kind: str) -> None:
    bases = [args.split()[0] for op, args in instructions(DOCKERFILES[kind]) if op == "FROM"]
    assert len(bases) >= 2, "build in one stage, ship the result in another"
    for base in bases:
        name, _, tag = base.partition("@")[0].rpartition(":")
        assert name and tag and tag != "latest" and re.search(r"\d", tag), f"FROM {base}: pin a versioned tag"
    if kind == "trainer":
        assert all(b.startswith("nvidia/cuda:") for b in bases)
        assert "-devel-" in bases[0] and "-runtime-" in bases[-1]  # compilers stay in the build stage


def pip_installs(path: Path) -> list[list[str]]:
    """The package arguments of every `pip install` in a Dockerfile (options and their values dropped)."""
    takes_value = {"--index-url", "-i", "--extra-index-url", "-c", "--constraint", "-r", "--requirement"}
    found = []
    for op, args in instructions(path):
        if op != "RUN":
            continue
        for command in re.split(r"&&|;|\bthen\b|\belse\b", args):
            words = command.split()
            if "pip" not in words or "install" not in words:
                continue
            rest = words[words.index("install") + 1:]
            packages, skip = [], False
            for word in rest:
                if skip:
                    skip = False
                elif word in takes_value:
                    skip = True
                elif not word.startswith("-"):
                    packages.append(word)
            found.append(packages)
    return found


@pytest.mark.parametrize("kind", KINDS)
def test_python_packages_are_pinned(kind: str) -> None:
    installs = pip_installs(DOCKERFILES[kind])
    packages = [p for group in installs for p in group]
    assert packages
    for package in packages:
        assert "==" in package or re.fullmatch(r"/wheels/kubetune-\*\.whl", package), f"unpinned: {package}"
    # torch is the one kubetune pins, installed first so nothing pulls another build
    assert installs[0] == [pyproject_pin("torch")]
    if kind == "trainer":
        assert pyproject_pin("bitsandbytes") in packages
        assert {p.split("==")[0] for p in packages} >= {"torch", "deepspeed", "bitsandbytes", "liger-kernel",
                                                        "flash-attn"}


@pytest.mark.parametrize("kind", KINDS)
def test_no_secrets_are_baked_in(kind: str) -> None:
    secretive = re.compile(r"TOKEN|SECRET|PASSW|ACCESS_KEY|API_KEY|CREDENTIAL|AWS_", re.IGNORECASE)
    for op, args in instructions(DOCKERFILES[kind]):
        if op in ("ENV", "ARG"):
            assert not secretive.search(args), f"{op} {args}: credentials come from Secrets at run time"
        if op in ("COPY", "ADD"):
            assert not re.search(r"\.env\b|\.pem\b|id_rsa|\.aws|\.netrc|kubeconfig", args), f"{op} {args}"
            assert "://" not in args, f"{op} {args}: no downloads in the build"


# --- the build context --------------------------------------------------------------------------------------------


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as (negated, regex), in Docker's syntax: `*` within a segment, `**` across segments."""
    patterns = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        text = line.lstrip("!").strip("/")
        rx = re.escape(text).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        patterns.append((negated, re.compile(rx.replace(r"\?", "[^/]") + "$")))
    return patterns


def ignored(path: str) -> bool:
    """Whether Docker leaves `path` out of the context: the last pattern matching it or a parent decides."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    verdict = False
    for negated, rx in dockerignore_patterns():
        if any(rx.match(c) for c in candidates):
            verdict = not negated
    return verdict


def copy_sources(path: Path) -> list[str]:
    sources = []
    for op, args in instructions(path):
        words = [w for w in args.split() if not w.startswith("--")]
        if op == "COPY" and "--from=" not in args:
            sources += words[:-1]
    return sources


def test_dockerignore_admits_what_the_images_copy_and_nothing_secret() -> None:
    for kind in KINDS:
        for source in copy_sources(DOCKERFILES[kind]):
            assert (ROOT / source).exists(), f"{kind}: COPY {source} does not exist"
            assert not ignored(source), f"{kind}: COPY {source} is excluded by .dockerignore"
    for kept in ("src/kubetune/__init__.py", "components/train.py", "data/dataset_info.json", "pyproject.toml"):
        assert not ignored(kept), kept
    for left_out in (".venv/bin/python", ".git/config", ".env", "tools/bin/helm", "tools/checkov-venv/bin/checkov",
                     "outputs/demo/mlflow.db", "saves/x/adapter_model.safetensors", "models/m/model.safetensors",
                     "tests/conftest.py", "scripts/demo.py", "src/kubetune/__pycache__/cli.cpython-311.pyc",
                     "data/.env", "src/kubetune/server.pem", "charts/kubetune/values.yaml"):
        assert ignored(left_out), f"{left_out} would be sent to the Docker build"


# --- names shared with the chart and the compiled pipeline ----------------------------------------------------------


def test_chart_app_version_and_image_names_match_the_pipeline(render) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == kubetune.__version__
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    defaults = PipelineConfig()
    for kind in KINDS:
        repository, _, tag = defaults.image(kind).rpartition(":")
        assert values["images"][kind]["repository"] == repository
        assert tag == kubetune.__version__ and values["images"][kind]["tag"] == ""  # "" = appVersion
    # rendered: the chart's pods and the pipeline config it registers use exactly those references
    manifests = render()
    assert find(manifests, "Job")["spec"]["template"]["spec"]["containers"][0]["image"] == defaults.image("runtime")
    assert yaml.safe_load(pipeline_config_text(manifests))["images"] == {
        "runtime": defaults.image("runtime"), "trainer": defaults.image("trainer")}


def test_runtime_image_carries_the_script_the_registration_job_runs(render) -> None:
    final = stages(DOCKERFILES["runtime"])[-1]
    workdir = Path([args for op, args in final if op == "WORKDIR"][-1])
    copied = {src: (workdir / dest if not dest.startswith("/") else Path(dest))
              for op, args in final if op == "COPY" and "--from=" not in args
              for src, dest in [args.split()[-2:]]}
    job = find(render(), "Job")["spec"]["template"]["spec"]["containers"][0]
    assert str(copied["scripts/register_pipeline.py"]) == job["command"][1]
    assert (ROOT / "scripts" / "register_pipeline.py").is_file()
    # the demo datasets sit where `dataset_dir: data` finds them from the working directory
    assert copied["data/"] == workdir / "data"
    assert yaml.safe_load(pipeline_config_text(render()))["dataset_dir"] == "data"
