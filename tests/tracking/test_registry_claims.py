"""Who should hold `champion` after racing promotions (`champion_claims`): the rule, then against a real server."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from kubetune.export_marker import mark_complete
from kubetune.tracking.champion_claims import CLAIM_TAG, CLAIM_WINDOW_S, Claim, best_version, fresh_claims, reconcile
from kubetune.tracking.registry import CHALLENGER, CHAMPION, alias_version, register_model


def test_the_best_claim_beats_the_champion() -> None:
    claims = [Claim("2", 60.0, 1.0), Claim("3", 55.0, 2.0)]
    assert best_version(claims, "1", 50.0, greater_is_better=True) == "2"
    assert best_version(claims, "3", None, greater_is_better=True) == "2"  # a stale write of v3 is undone
    assert best_version(claims, "1", 50.0, greater_is_better=False) == "1"  # a loss: the champion's 50 is best
    assert best_version([], "1", 50.0, greater_is_better=True) == "1"
    assert best_version([], None, None, greater_is_better=True) is None


def test_ties_go_to_the_lower_version_and_missing_values_lose() -> None:
    assert best_version([Claim("4", 60.0, 1.0), Claim("3", 60.0, 2.0)], "1", 50.0, True) == "3"
    assert best_version([Claim("2", math.nan, 1.0), Claim("3", 1.0, 2.0)], None, None, True) == "3"
    assert best_version([Claim("2", 1.0, 1.0)], "1", None, True) == "2"  # a champion without a value loses


def test_a_forced_claim_beats_older_claims_and_newer_ones_compete_with_it() -> None:
    older, forced = Claim("2", 90.0, 1.0), Claim("3", 40.0, 2.0, forced=True)
    assert best_version([older, forced], "2", 90.0, True) == "3"  # the operator's rollback stands
    assert best_version([older, forced, Claim("4", 45.0, 3.0)], "3", 40.0, True) == "4"  # beat it later: fine
    assert best_version([older, forced, Claim("4", 30.0, 3.0)], "4", 30.0, True) == "3"
    assert best_version([Claim("3", None, 2.0, forced=True)], "2", 90.0, True) == "3"  # forced without a metric


def _version(uri: str, client: Any, name: str, tmp_path: Path, value: float) -> str:
    experiment = client.get_experiment_by_name(f"claims-{name}") or client.get_experiment(
        client.create_experiment(f"claims-{name}"))
    run = client.create_run(experiment.experiment_id).info.run_id
    folder = tmp_path / f"m{value}"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    mark_complete(folder)
    return register_model(uri, name, folder, run_id=run,
                          tags={"gate_metric": "rouge", "gate_metric_value": repr(value)})


def _claim(client: Any, name: str, version: str, at: float, metric: str = "rouge") -> None:
    claim = {"at": at, "metric": metric, "greater_is_better": True, "forced": False}
    client.set_model_version_tag(name, version, CLAIM_TAG, json.dumps(claim))


def test_reconcile_undoes_a_stale_write(mlflow_server: str, mlflow_client: Any, tmp_path: Path,
                                        unique: str) -> None:
    name = f"reconcile-{unique}"
    old, better, worse = (_version(mlflow_server, mlflow_client, name, tmp_path, v) for v in (50.0, 60.0, 55.0))
    now = time.time()
    _claim(mlflow_client, name, better, now - 1)
    _claim(mlflow_client, name, worse, now)
    # the worse racer's write landed last, and the better one was left as challenger by an earlier round
    mlflow_client.set_registered_model_alias(name, CHAMPION, worse)
    mlflow_client.set_registered_model_alias(name, CHALLENGER, better)
    assert reconcile(mlflow_client, name, "rouge", greater_is_better=True) == better
    assert alias_version(mlflow_client, name, CHAMPION) == better
    assert alias_version(mlflow_client, name, CHALLENGER) is None  # one version is never both
    assert old not in {c.version for c in fresh_claims(mlflow_client, name, "rouge", True)}


def test_old_claims_and_other_metrics_do_not_count(mlflow_server: str, mlflow_client: Any, tmp_path: Path,
                                                   unique: str) -> None:
    name = f"stale-claims-{unique}"
    champion, old_claim, other_metric = (_version(mlflow_server, mlflow_client, name, tmp_path, v)
                                         for v in (50.0, 99.0, 98.0))
    _claim(mlflow_client, name, old_claim, time.time() - 2 * CLAIM_WINDOW_S)  # last week's promotion
    _claim(mlflow_client, name, other_metric, time.time(), metric="bleu")
    mlflow_client.set_registered_model_alias(name, CHAMPION, champion)  # e.g. rolled back by hand since
    assert fresh_claims(mlflow_client, name, "rouge", True) == []
    assert reconcile(mlflow_client, name, "rouge", greater_is_better=True) == champion


def test_claims_are_read_with_their_gate_value(mlflow_server: str, mlflow_client: Any, tmp_path: Path,
                                               unique: str) -> None:
    name, value = f"claim-value-{unique}", 1.0
    version = _version(mlflow_server, mlflow_client, name, tmp_path, value)
    _claim(mlflow_client, name, version, time.time())
    [claim] = fresh_claims(mlflow_client, name, "rouge", True)
    assert (claim.version, claim.value, claim.forced) == (version, value, False)


def test_a_nan_champion_does_not_look_like_a_moving_one(mlflow_server: str, mlflow_client: Any, tmp_path: Path,
                                                        unique: str) -> None:
    from kubetune.tracking.registry import promote

    name = f"nan-champion-{unique}"
    champion, candidate = (_version(mlflow_server, mlflow_client, name, tmp_path, v) for v in (math.nan, 1.0))
    promote(mlflow_server, name, champion, "rouge", force=True)
    decision = promote(mlflow_server, name, candidate, "rouge")  # the re-read sees NaN again: no endless retry
    assert decision.champion_version == champion
    assert alias_version(mlflow_client, name, CHAMPION) == (candidate if decision.promoted else champion)
