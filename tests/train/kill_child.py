"""`kubetune train <config>` that sends itself a real signal at one chosen point (run by test_kill_faults.py).

The point comes from `$KUBETUNE_KILL_SPEC` (JSON):

- `{"kind": "step", "at": k, "signal": "SIGKILL"}`: at the k-th optimiser step of this process, after the
  backward pass and before the weights change (an optimiser pre-step hook): mid-step.
- `{"kind": "save", "at": n, "file": "optimizer.pt", "signal": "SIGKILL"}`: while checkpoint n is written,
  when `torch.save` (for `trainer_state.json`: `TrainerState.save_to_json`) writes `file` into it: SIGKILL
  writes half of that file's bytes first (a half-written checkpoint), SIGTERM lets the write finish (the
  signal arrives while the save goes on).

The signal is `os.kill` of this very process, so the kernel delivers it as it would the kubelet's.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import sys

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

SPEC = json.loads(os.environ["KUBETUNE_KILL_SPEC"])
SIGNAL = getattr(signal, SPEC["signal"])


def _fire() -> None:
    print(f"kill_child: sending {SPEC['signal']} at {SPEC}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), SIGNAL)


if SPEC["kind"] == "step":
    calls = [0]

    def before_step(optimizer, args, kwargs):  # noqa: ANN001
        calls[0] += 1
        if calls[0] == SPEC["at"]:
            _fire()

    register_optimizer_step_pre_hook(before_step)  # every optimiser, global
else:
    real_save = torch.save
    folder = re.compile(rf"^\.?checkpoint-{SPEC['at']}(\.tmp\d+)?$")  # the Trainer's folder, or ppo's temp one
    fired = [False]

    def save(obj, f, *args, **kwargs):  # noqa: ANN001
        path = os.fspath(f) if isinstance(f, str | os.PathLike) else None
        if fired[0] or path is None or os.path.basename(path) != SPEC["file"] or not folder.match(
                os.path.basename(os.path.dirname(path))):
            return real_save(obj, f, *args, **kwargs)
        fired[0] = True
        if SIGNAL == signal.SIGKILL:
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            with open(path, "wb") as out:
                out.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                out.flush()
                os.fsync(out.fileno())
            _fire()
        result = real_save(obj, f, *args, **kwargs)
        _fire()
        return result

    torch.save = save

    if SPEC["file"] == "trainer_state.json":  # written by the Trainer's own JSON writer, last of a checkpoint
        from transformers import TrainerState

        real_json = TrainerState.save_to_json

        def save_to_json(self, json_path: str) -> None:  # noqa: ANN001
            if fired[0] or not folder.match(os.path.basename(os.path.dirname(json_path))):
                return real_json(self, json_path)
            fired[0] = True
            if SIGNAL == signal.SIGKILL:
                text = json.dumps(self.__dict__, default=str)
                with open(json_path, "w") as out:
                    out.write(text[: len(text) // 2])
                    out.flush()
                    os.fsync(out.fileno())
                _fire()
            real_json(self, json_path)
            _fire()

        TrainerState.save_to_json = save_to_json


if __name__ == "__main__":
    from kubetune.cli import main

    raise SystemExit(main(sys.argv[1:]))
