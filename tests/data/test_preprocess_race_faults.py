"""Two runs preprocess the same data at the same moment: one builds the cache entry, the other waits and reuses it.

Two real processes share one kubetune cache (`KUBETUNE_CACHE`), load the same config, and start tokenising
together (each says it is ready after its imports and waits for a start file, so both reach `pipeline.tokenized`
within milliseconds). The dataset is large enough (3000 rows) that the build takes a while and the two overlap.
`tokenized` holds a file lock while it builds and publishes the entry by renaming a temp folder, so:

- exactly one process logs "tokenised N train" (a build); the other logs the cache hit after waiting;
- both get identical rows (a hash of every column);
- the cache holds one entry, complete (meta.json), and no temp folder left behind.

data_lost (the chaos row) = extra builds + processes whose rows differ from the builder's + broken or leftover
entries.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

CHILD = """
import hashlib, json, logging, sys, time
from pathlib import Path
logging.basicConfig(level=logging.INFO, format="[%(levelname)s|%(name)s] %(message)s")
from kubetune.config import load_config
from kubetune.data.pipeline import tokenized
from kubetune.data.setup import tokenizer_and_template
cfg = load_config(sys.argv[1])
tokenizer, template = tokenizer_and_template(cfg)
go = Path(sys.argv[2])
go.with_name(f"ready-{__import__('os').getpid()}").touch()  # past the imports
while not go.exists():
    time.sleep(0.005)
data = tokenized(cfg.data, tokenizer, template, stage="sft", seed=cfg.train.seed)
rows = hashlib.sha256(json.dumps(data.train.to_dict(), sort_keys=True).encode()).hexdigest()
print("RESULT " + json.dumps({"key": data.key, "cache_hit": data.cache_hit, "rows": rows, "n": len(data.train)}))
"""


def dataset(folder: Path, rows: int = 3000) -> Path:
    folder.mkdir()
    (folder / "race.json").write_text(json.dumps([
        {"instruction": f"Question {i}: what is {i} plus {i * 7}?", "input": "", "output": f"It is {i * 8}. " * 3}
        for i in range(rows)]))
    (folder / "dataset_info.json").write_text(json.dumps({"race": {"file_name": "race.json"}}))
    return folder


@pytest.mark.chaos
def test_two_processes_preprocessing_the_same_data_build_it_once(chaos_row, tiny_model_dir: Path, tmp_path: Path,
                                                                 cache_dir: Path) -> None:
    row = chaos_row("two runs preprocess the same data at once")
    config = tmp_path / "race.yaml"
    config.write_text(yaml.safe_dump({
        "model_name_or_path": str(tiny_model_dir), "stage": "sft", "dataset": "race",
        "dataset_dir": str(dataset(tmp_path / "data")), "template": "chatml", "cutoff_len": 64,
        "output_dir": str(tmp_path / "out"), "preprocessing_num_workers": 1}))
    go = tmp_path / "go"
    env = {**os.environ, "KUBETUNE_CACHE": str(cache_dir)}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(config), str(go)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    row.runs += 2
    deadline = time.monotonic() + 240  # both past their imports (a loaded box takes its time), then the start
    while len(list(tmp_path.glob("ready-*"))) < 2 and time.monotonic() < deadline and all(
            p.poll() is None for p in procs):
        time.sleep(0.01)
    go.touch()
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-2000:] for o in outputs)
    results = [json.loads(next(line for line in o.splitlines() if line.startswith("RESULT "))[7:]) for o in outputs]

    builds = sum("tokenised " in o and " train / " in o for o in outputs)
    assert sorted(r["cache_hit"] for r in results) == [False, True], outputs
    waited = sum("waiting for another process to tokenise" in o for o in outputs)
    different = sum(r["rows"] != results[0]["rows"] or r["key"] != results[0]["key"] for r in results)
    entries = sorted((cache_dir / "tokenized").iterdir())
    leftovers = [p.name for p in entries if p.name.startswith(".") and not p.name.endswith(".lock")]
    complete = [p for p in entries if not p.name.startswith(".") and (p / "meta.json").is_file()]
    row.detail = f"{builds} build, {waited} waited on the lock"
    row.data_lost = (builds - 1) + different + len(leftovers) + abs(len(complete) - 1)
    assert row.data_lost == 0, (builds, different, leftovers, [p.name for p in entries])
    assert results[0]["n"] == 3000
