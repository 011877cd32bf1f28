"""A separate process that registers or promotes on command, for the registry fault tests (not a test file).

    python registry_worker.py

reads one JSON command per line from stdin and answers one JSON line on stdout per command, after
printing `ready` once mlflow is imported (so a test can start two workers, wait for both, then send the
commands back to back: they race from the same instant):

    {"op": "promote", "uri": ..., "name": ..., "version": "2", "metric": "rouge", "value": 60.0}
    {"op": "register", "uri": ..., "name": ..., "model": "/path", "run_id": ..., "tags": {...}}
    {"op": "export", "model": "/tiny", "out": "/path", "stall_tokenizer": true}

`export` runs the real `kubetune export` on a model folder; with `stall_tokenizer` the tokenizer's write
hangs (as on a stuck volume) after the weights are written, so a test can kill the step mid-export.
"""

from __future__ import annotations

import json
import sys
import time
import traceback


def _promote(command: dict) -> dict:
    from kubetune.tracking.registry import promote

    decision = promote(command["uri"], command["name"], command["version"], command["metric"],
                       metrics={command["metric"]: command["value"]})
    return {"promoted": decision.promoted, "alias": decision.alias, "reason": decision.reason,
            "champion_version": decision.champion_version}


def _register(command: dict) -> dict:
    from kubetune.tracking.registry import register_model

    return {"version": register_model(command["uri"], command["name"], command["model"], run_id=command["run_id"],
                                      tags=command.get("tags"))}


def _export(command: dict) -> dict:
    from kubetune.config import load_config
    from kubetune.export import export

    if command.get("stall_tokenizer"):
        from transformers import PreTrainedTokenizerBase

        def stalled(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ARG001
            print(json.dumps({"stalled": True}), flush=True)
            time.sleep(3600)

        PreTrainedTokenizerBase.save_pretrained = stalled
    export(load_config(None, {"model_name_or_path": command["model"], "export_dir": command["out"]}))
    return {"exported": command["out"]}


OPS = {"promote": _promote, "register": _register, "export": _export}


def main() -> None:
    import mlflow  # noqa: F401  (imported before `ready`: the race starts after the slow imports)

    import kubetune.tracking.registry  # noqa: F401

    print("ready", flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        try:
            answer = OPS[command["op"]](command)
        except Exception as err:  # the test reads the error; the worker stays up for the next command
            answer = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
