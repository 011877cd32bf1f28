"""The pipeline's evaluate step: the candidate and its baseline scored on the same data in the same step.

The baseline is the registered model's `champion` when there is one and its files can be read, else the base
model the run started from (said in the result, with the reason). A champion that is registered but cannot be
read still leaves the base model scored, so the step's numbers are measured, but the metrics then carry the
champion's version and why (`gates.CHAMPION_UNREADABLE`), and promotion refuses a candidate that was not compared
with the champion. Both sides get the same evaluation (held-out loss, generation metrics), the same benchmarks
(`task`, `lm_eval_tasks` in the evaluation section), and then, when configured, a judge compares their answers
(`evaluation.judge_model`) and a reward model scores them (the pipeline's own rm step — rlhf, or dpo/kto with a
`stages.rm` section — else `evaluation.reward_model`). Everything lands in one metrics dict (the candidate's
`<name>`, `baseline/<name>`, `delta/<name>`,
`judge/*`, `reward/*`) and one HTML report.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kubetune.config import RunConfig
from kubetune.config.pipeline import PipelineConfig
from kubetune.evaluate.gates import (
    CHAMPION_UNREADABLE,
    CHAMPION_UNREADABLE_WHY,
    FETCH_FAILED,
    NO_MODEL,
    REGISTRY_UNREADABLE,
    with_baseline,
)
from kubetune.evaluate.report import ReportData, most_different

logger = logging.getLogger(__name__)

_REGISTRY_TIMEOUT_S, _REGISTRY_RETRIES = 30.0, 2  # as the promote step reads the registry

# run_eval(run_cfg, side) -> (metrics, rows of generated_predictions.jsonl): the step's own evaluation run
RunEval = Callable[[RunConfig, str], tuple[dict[str, float], list[dict[str, str]]]]


@dataclass
class Baseline:
    """What the candidate is compared with: `model_path` None means the base model as configured.

    `unreadable_champion` is set when a champion is registered (or may be: the registry did not answer) but the
    base model had to stand in for it; `why` is then a key of `gates.CHAMPION_UNREADABLE_REASONS`. The comparison
    carries both as metrics, and promotion refuses such a candidate (`gates.check_gates`).
    """

    label: str
    model_path: str | None = None
    note: str = ""
    unreadable_champion: str | None = None
    why: int = 0

    def refusal_metrics(self) -> dict[str, float]:
        """The metrics that tell the promote step the champion was not scored ({} when it was, or when none is)."""
        if self.unreadable_champion is None:
            return {}
        version = float(self.unreadable_champion) if self.unreadable_champion.isdigit() else 0.0
        return {CHAMPION_UNREADABLE: version, CHAMPION_UNREADABLE_WHY: float(self.why)}


@dataclass
class Comparison:
    """The step's outcome: one metrics dict (see the module docstring) and what the report shows."""

    metrics: dict[str, float]
    baseline: Baseline
    report: ReportData
    samples: list[dict[str, str]] = field(default_factory=list)


def find_baseline(cfg: PipelineConfig, tracking_uri: str | None) -> Baseline:
    """The registered champion's model when it can be read here, else the base model (with the reason).

    A champion that is registered but whose model cannot be read (or a registry that does not answer) still
    leaves a baseline to score, the base model, so the step's metrics are measured; the returned baseline names
    the champion and why, and promotion refuses the candidate on it (it was not compared with the champion).
    """
    base = f"base model {cfg.shared.get('model_name_or_path', '')}"
    if not tracking_uri:
        return Baseline(base)
    name = cfg.promotion.registered_model
    try:
        from kubetune.tracking.connection import http_limits
        from kubetune.tracking.registry_reads import alias_version, registry_client

        client = registry_client(tracking_uri)
        with http_limits(_REGISTRY_TIMEOUT_S, _REGISTRY_RETRIES):  # MLflow's defaults wait minutes on a dead server
            version = alias_version(client, name, "champion")
            champion = client.get_model_version(name, version) if version is not None else None
    except Exception as err:  # the registry is unreachable: whether a champion exists is unknown
        note = f"the registry could not be read ({type(err).__name__}: {_first_line(err)})"
        logger.warning("evaluate: %s; scoring the base model as baseline, and promotion will refuse", note)
        return Baseline(base, note=note, unreadable_champion="", why=REGISTRY_UNREADABLE)
    if champion is None:
        return Baseline(base, note="no champion registered yet")
    source = champion.source or ""
    try:
        local = _readable_model(source, tracking_uri, name, champion.version)
    except Exception as err:  # an artifact store that does not answer, objects gone: the base, and the reason
        note = (f"champion v{champion.version}'s model {source!r} could not be fetched "
                f"({type(err).__name__}: {_first_line(err)})")
        why = FETCH_FAILED
    else:
        if local is not None:
            return Baseline(f"champion v{champion.version}", model_path=local)
        note, why = f"champion v{champion.version}'s model {source!r} holds no model this step can read", NO_MODEL
    logger.warning("evaluate: %s; scoring the base model as baseline, and promotion will refuse", note)
    return Baseline(base, note=note, unreadable_champion=str(champion.version), why=why)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0][:300]


def _readable_model(source: str, tracking_uri: str, name: str, version: str) -> str | None:
    """A local path the loader reads the champion's model from, None when its source holds no model. A model in
    s3:// is fetched into the cache (a missing one raises); one kept in MLflow's artifact store is downloaded once
    per version into the cache (into a temporary folder renamed when complete, so a killed
    download is fetched again, never used)."""
    if source.startswith("s3://"):
        from kubetune.storage import localize

        found = _model_dir(localize(source))  # into the cache, where the loader finds it again
        return str(found) if found else None
    if source.startswith(("mlflow-artifacts:", "runs:", "models:")):
        import shutil
        import tempfile

        from mlflow.artifacts import download_artifacts

        from kubetune.paths import cache_root

        target = cache_root() / "champions" / name / str(version)
        if _model_dir(target) is None:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=target.parent))
            try:
                download_artifacts(artifact_uri=source, dst_path=str(partial), tracking_uri=tracking_uri)
                if _model_dir(target) is None:  # another step sharing the cache may have finished first
                    shutil.rmtree(target, ignore_errors=True)
                    partial.rename(target)
            except OSError:
                if _model_dir(target) is None:
                    raise
            finally:
                shutil.rmtree(partial, ignore_errors=True)
        found = _model_dir(target)
        return str(found) if found else None
    found = _model_dir(Path(source.removeprefix("file://")))
    return str(found) if found else None


def _model_dir(folder: Path) -> Path | None:
    """`folder`, or its one sub-folder (an artifact downloaded under its own name), holding a model's config."""
    for candidate in (folder, *sorted(p for p in folder.glob("*") if p.is_dir())):
        if (candidate / "config.json").is_file():
            return candidate
    return None


def compare(cfg: PipelineConfig, candidate_cfg: RunConfig, baseline: Baseline, run_eval: RunEval, *,
            reward_model: str | None = None) -> Comparison:
    """Score both sides and compare them (see the module docstring)."""
    baseline_cfg = _baseline_config(candidate_cfg, baseline)
    ours, our_rows = run_eval(candidate_cfg, "candidate")
    theirs, their_rows = run_eval(baseline_cfg, "baseline")
    if candidate_cfg.benchmark.task or candidate_cfg.benchmark.lm_eval_tasks:
        ours.update(_suite_metrics(candidate_cfg))
        theirs.update(_suite_metrics(baseline_cfg))
    metrics = with_baseline(ours, theirs)
    metrics.update(baseline.refusal_metrics())  # the promote step refuses a candidate not compared with the champion
    samples = _paired_samples(our_rows, their_rows)
    if len(samples) < max(len(our_rows), len(their_rows)):
        logger.warning("evaluate: %d of %d candidate / %d baseline answers pair up by prompt (the judge and the "
                       "reward model see only those)", len(samples), len(our_rows), len(their_rows))
    if cfg.evaluation.judge_model and samples:
        metrics.update(_judge_metrics(cfg, samples[:cfg.evaluation.judge_max_prompts]))
    reward = reward_model or cfg.evaluation.reward_model
    if reward and samples:
        metrics.update(_reward_metrics(cfg, candidate_cfg, reward, samples))
    categories = {name.split("/", 1)[1]: (value, theirs[name]) for name, value in ours.items()
                  if name.startswith("benchmark/") and name in theirs}
    shown = {k: (v, theirs.get(k)) for k, v in sorted(ours.items()) if not k.endswith(("runtime", "per_second"))}
    shown.update({k: (v, None) for k, v in metrics.items() if k.startswith(("judge/", "reward/"))})
    report = ReportData(title=f"Evaluation — {cfg.name}", candidate="candidate (this run)", baseline=baseline.label,
                        metrics=shown, categories=categories, samples=most_different(samples, 5),
                        notes=[f"Baseline: {baseline.note}."] if baseline.note else [])
    return Comparison(metrics, baseline, report, samples)


def _baseline_config(candidate_cfg: RunConfig, baseline: Baseline) -> RunConfig:
    """The candidate's evaluation config pointed at the baseline: its model, no adapter of this run."""
    flat = candidate_cfg.to_flat()
    flat["adapter_name_or_path"] = None
    if baseline.model_path:  # a merged champion: a whole model, no adapter, no quantisation of ours
        flat["model_name_or_path"] = baseline.model_path
        flat["quantization_bit"] = None
    flat["output_dir"] = str(Path(candidate_cfg.train.output_dir).parent / "baseline")
    from kubetune.config import load_config

    baseline_cfg = load_config(None, flat)
    baseline_cfg.model.hf_hub_token = candidate_cfg.model.hf_hub_token  # to_flat() masks secrets
    return baseline_cfg


def _suite_metrics(run_cfg: RunConfig) -> dict[str, float]:
    from kubetune.evaluate.suites import run_suites

    result = run_suites(_without_save_dir(run_cfg))
    metrics = dict(result.get("lm_eval", {}).get("metrics", {}))
    for name, value in result.get("benchmark", {}).get("categories", {}).items():
        metrics[f"benchmark/{name}"] = value
    return metrics


def _without_save_dir(run_cfg: RunConfig) -> RunConfig:
    """A copy of `run_cfg` that writes no benchmark files (two sides score in one step); the step's own is kept."""
    return dataclasses.replace(run_cfg, benchmark=run_cfg.benchmark.model_copy(update={"save_dir": None}))


def _paired_samples(ours: list[dict[str, str]], theirs: list[dict[str, str]]) -> list[dict[str, str]]:
    """{prompt, candidate, baseline, label} per prompt both sides answered (the same rows, in the same order);
    `label` is the row's reference answer ("" when the row has none)."""
    return [{"prompt": a["prompt"], "candidate": a["predict"], "baseline": b["predict"], "label": a.get("label", "")}
            for a, b in zip(ours, theirs, strict=False) if a["prompt"] == b["prompt"]]


def _judge_metrics(cfg: PipelineConfig, samples: list[dict[str, str]]) -> dict[str, float]:
    from kubetune.evaluate.judge import EndpointJudge, LocalJudge
    from kubetune.evaluate.judge import compare as judge_compare

    e = cfg.evaluation
    if e.judge_model.startswith(("http://", "https://")):
        judge = EndpointJudge(e.judge_model, e.judge_endpoint_model, api_key=os.environ.get(e.judge_api_key_env, ""))
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from kubetune.storage import localize

        path = localize(e.judge_model)
        # safetensors only: a judge folder holding only a pickle is refused, as every model kubetune loads
        model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, dtype="auto").eval()
        judge = LocalJudge(model, AutoTokenizer.from_pretrained(path))
    result = judge_compare(judge, [s["prompt"] for s in samples], [s["candidate"] for s in samples],
                           [s["baseline"] for s in samples], seed=int(cfg.shared.get("seed", 42)))
    return result.as_metrics()


def _reward_metrics(cfg: PipelineConfig, run_cfg: RunConfig, reward_model: str,
                    samples: list[dict[str, str]]) -> dict[str, float]:
    from kubetune.data.setup import tokenizer_and_template
    from kubetune.evaluate.reward_gap import reward_gap, templated_scorer
    from kubetune.model.loader import resolve_model_path
    from kubetune.model.reward import load_reward_model, reward_model_type_of

    base_args = run_cfg.model.model_copy(update={"adapter_name_or_path": None})
    recorded = reward_model_type_of(reward_model) if "://" not in reward_model else None
    rm = load_reward_model(reward_model, base_model_args=base_args,
                           reward_model_type=recorded or cfg.evaluation.reward_model_type)
    tokenizer, template = tokenizer_and_template(run_cfg, resolve_model_path(run_cfg.model))
    score = templated_scorer(rm, tokenizer, template)
    labels = [s.get("label", "") for s in samples]
    gap = reward_gap(score, [s["prompt"] for s in samples], [s["candidate"] for s in samples],
                     [s["baseline"] for s in samples], reference=labels if all(labels) else None,
                     seed=int(cfg.shared.get("seed", 42)))
    return gap.as_metrics()


def read_predictions(path: Path) -> list[dict[str, str]]:
    """The rows of a generated_predictions.jsonl ([] when the step wrote none)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
