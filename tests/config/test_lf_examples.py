"""LLaMA-Factory 0.9.5's own example configs validate with kubetune, their model path changed only.

The examples come from LLaMA-Factory's source distribution, which `make lf-examples` unpacks into tools/lf-src
(skipped without it). `scripts/lf_examples.py` decides what is out of scope (NPU, multimodal, pre-quantised
checkpoints, datasets LF does not ship); every other example must validate, except the few below, each refused
with its own reason — a new failure, or a refusal whose reason changed, fails this test.

The Ray example reads `dataset_dir: REMOTE:llamafactory/demo_data`, a hub repo. No hub is reachable here: the
stand-in hub of tests/hub_server.py serves that repo from LLaMA-Factory's own data folder (its dataset_info.json
and demo files), and huggingface_hub downloads from it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hub_server import start_hub

REPO = Path(__file__).resolve().parents[2]
LF_ROOT = REPO / "tools" / "lf-src" / "llamafactory-0.9.5"
sys.path.insert(0, str(REPO / "scripts"))

# example -> what its refusal says
REFUSED = {
    "extras/mod/llama3_full_sft.yaml": "does not import with the transformers 5",
}


@pytest.fixture(scope="module")
def results(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    if not (LF_ROOT / "examples").is_dir():
        pytest.skip("LLaMA-Factory's source is not in tools/lf-src (`make lf-examples` fetches it)")
    import lf_examples

    with pytest.MonkeyPatch.context() as patch, start_hub({"llamafactory/demo_data": LF_ROOT / "data"}) as hub:
        patch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
        patch.setenv("HF_ENDPOINT", hub.url)
        cache = tmp_path_factory.mktemp("cache")  # the hub's downloads land here; the models are the real cache's
        (cache / "models").mkdir()
        (cache / "models" / smollm2_dir.name).symlink_to(smollm2_dir)
        patch.setenv("KUBETUNE_CACHE", str(cache))
        yield _check_all(lf_examples, smollm2_dir, tmp_path_factory)


def _check_all(lf_examples, smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:  # noqa: ANN001
    registered = set(json.loads((LF_ROOT / "data" / "dataset_info.json").read_text()))
    adapter = lf_examples.lora_adapter(str(smollm2_dir), tmp_path_factory.mktemp("adapter"))
    found = {}
    for folder in lf_examples.FOLDERS:
        for path in sorted((LF_ROOT / "examples" / folder).rglob("*.yaml")):
            config = yaml.safe_load(path.read_text()) or {}
            if isinstance(config, dict) and "model_name_or_path" in config and not lf_examples.out_of_scope(
                    path, config, registered):
                overrides = lf_examples.model_overrides(config, str(smollm2_dir), adapter)
                found[str(path.relative_to(LF_ROOT / "examples"))] = lf_examples.check(path, LF_ROOT, overrides)
    return found


def test_every_text_model_example_validates_or_is_refused_with_its_reason(results: dict[str, str]) -> None:
    assert len(results) >= 30, "fewer in-scope examples than LLaMA-Factory 0.9.5 has: is the layout different?"
    unexpected = {name: error for name, error in results.items() if error and name not in REFUSED}
    assert unexpected == {}
    for name, reason in REFUSED.items():
        assert reason in results[name], f"{name}: {results[name] or 'validates now: remove it from REFUSED'}"
