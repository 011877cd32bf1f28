"""Pre-emption: a SIGTERM during training ends the current optimiser step, saves `checkpoint-N`, and exits.

Kubernetes pre-empts a pod with SIGTERM to its first process and a SIGKILL `terminationGracePeriodSeconds`
later (30 s unless the pod says otherwise); `kubetune train` passes the SIGTERM on to torchrun, which passes it
on to every rank. With `save_on_sigterm_grace` > 0 (default 30) each stage's training loop gets a
`PreemptionCallback`: its signal handler only notes the time; at the end of the optimiser step under way the
ranks agree (an all-reduce of the flag, so every rank stops after the same step and the collective save
cannot hang), and the step saves a checkpoint in the Trainer's own `checkpoint-N` format — the one the rerun's
auto-resume picks up. Training then stops without writing the final model, and the stage raises `Preempted`,
which `kubetune train` turns into exit code `PREEMPTED_EXIT_CODE` (75) and a message that a rerun resumes.
A watchdog thread logs an error if the grace period passes before the checkpoint is complete (the SIGKILL
will then leave the previous checkpoint to resume from: `find_resume_checkpoint` skips a half-written one).

transformers' own `enable_jit_checkpoint` is not used: its ranks each decide on their own when to save (a
collective save then waits for a rank that never comes), and it may save between the micro-batches of an
accumulated step, which the resumed run cannot continue exactly.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from kubetune.config import RunConfig

logger = logging.getLogger(__name__)

# sysexits' EX_TEMPFAIL ("temporary failure; the user is invited to retry"): a pre-empted run that saved its
# checkpoint, told apart from a crash (1), a config error (2) and a death by signal (128 + n).
PREEMPTED_EXIT_CODE = 75
# written by the main process next to the checkpoints; how a launcher (kubetune train over torchrun, whose own
# exit code after a SIGTERM says nothing of its ranks) knows the ranks stopped on purpose
PREEMPTED_FILE = "preempted.json"


class Preempted(RuntimeError):
    """Training stopped after a SIGTERM, with its progress saved in `checkpoint`; a rerun resumes from it.

    Attributes:
        step: the optimiser step (PPO: update) saved.
        checkpoint: the `checkpoint-N` folder written, or None if the save did not finish.
    """

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        self.step, self.checkpoint = step, checkpoint
        saved = (f"saved {checkpoint} at step {step}" if checkpoint is not None
                 else f"stopped at step {step} without a new checkpoint")
        super().__init__(f"pre-empted (SIGTERM): {saved}; run the same command again to resume "
                         f"(exit code {PREEMPTED_EXIT_CODE})")


class PreemptionCallback(TrainerCallback):
    """On SIGTERM: finish the optimiser step, save a checkpoint at the step every rank agrees on, stop training.

    Args:
        grace: seconds from the SIGTERM until the SIGKILL that is expected to follow; only reported on (the
            save is never cut short), as a log line saying the checkpoint came too late.
    """

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.signalled_at: float | None = None  # time.monotonic() of the first SIGTERM; set by the handler alone
        self.stopped_step: int | None = None
        self.checkpoint: Path | None = None
        self._previous: Any = None
        self._installed = False
        self._signalled = threading.Event()
        self._saved = threading.Event()

    # --- the signal: the handler notes the time and wakes the watchdog, nothing else (a second SIGTERM does
    # nothing; SIGINT and SIGKILL still stop the run at once) ---
    def _on_sigterm(self, _signum: int, _frame: object) -> None:
        if self.signalled_at is None:
            self.signalled_at = time.monotonic()
            self._signalled.set()

    def _watch(self) -> None:
        self._signalled.wait()
        if self._saved.is_set():
            return
        logger.warning("SIGTERM received: training stops after the current step and saves a checkpoint "
                       "(save_on_sigterm_grace %gs)", self.grace)
        if not self._saved.wait(self.grace):
            logger.error("save_on_sigterm_grace (%gs) has passed and the pre-emption checkpoint is not complete: "
                         "a SIGKILL now loses it, and the rerun resumes from the previous complete checkpoint "
                         "(raise save_on_sigterm_grace and the pod's terminationGracePeriodSeconds together)",
                         self.grace)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
            logger.warning("save_on_sigterm_grace: training runs outside the main thread, so a SIGTERM cannot be "
                           "caught; it kills the run without a checkpoint")
            return
        self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        self._installed = True
        threading.Thread(target=self._watch, name="sigterm-grace", daemon=True).start()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.stopped_step is not None or not any_rank(self.signalled_at is not None, args):
            return control
        self.stopped_step = state.global_step
        control.should_save, control.should_training_stop = True, True
        control.should_evaluate = False  # the grace is for the checkpoint, not for an evaluation due now
        if state.is_world_process_zero:
            logger.warning("pre-empted: saving checkpoint-%d and stopping", state.global_step)
        return control

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        # the Trainer ends the epoch it broke out of: no evaluation, nor a second save of the same step, is due
        if self.stopped_step is not None:
            control.should_evaluate = False
            control.should_save = control.should_save and self.checkpoint is None
        return control

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.stopped_step is None or self.checkpoint is not None:
            return
        self.checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self._saved.set()
        # its trainer_state.json has the best checkpoint written; forgotten now, the Trainer's end of training
        # neither loads it (load_best_model_at_end: time the grace lacks) nor deletes this checkpoint for it
        # (save_total_limit 1 keeps the best alone)
        state.best_model_checkpoint = None
        elapsed = time.monotonic() - self.signalled_at if self.signalled_at is not None else 0.0
        if state.is_world_process_zero:
            late = elapsed > self.grace
            (logger.error if late else logger.warning)(
                "pre-emption checkpoint %s written %.1fs after the SIGTERM (save_on_sigterm_grace %gs%s)",
                self.checkpoint, elapsed, self.grace, ": too late, a SIGKILL may have cut it" if late else "")

    def release(self) -> None:
        """Hand SIGTERM back to the handler before training and end the watchdog (at the end of training, or
        when an exception ends it: `released`)."""
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False
        self._saved.set()  # the watchdog has nothing more to wait for
        self._signalled.set()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.release()
        if self.stopped_step is not None and state.is_world_process_zero:
            record = {"step": self.stopped_step, "checkpoint": str(self.checkpoint) if self.checkpoint else None}
            (Path(args.output_dir) / PREEMPTED_FILE).write_text(json.dumps(record) + "\n")


def any_rank(flag: bool, args: Any) -> bool:
    """Whether `flag` is true on any rank (an all-reduce when a process group is up; `flag` itself otherwise).

    Every rank calls it at the same point of the same step, so all of them take the same decision.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    on_gpu = torch.distributed.get_backend() == "nccl"  # NCCL reduces CUDA tensors only, gloo CPU ones
    device = getattr(args, "device", None) if on_gpu else torch.device("cpu")
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item() > 0)


def preemption_callbacks(cfg: RunConfig) -> list[TrainerCallback]:
    """[PreemptionCallback(save_on_sigterm_grace)] unless it is 0 (off)."""
    grace = cfg.train.save_on_sigterm_grace
    return [PreemptionCallback(grace)] if grace > 0 else []


@contextmanager
def released(callbacks: Iterable[Any]) -> Iterator[None]:
    """Run the training loop; however it ends (an exception skips `on_train_end`), give SIGTERM back."""
    try:
        yield
    finally:
        for callback in callbacks:
            if isinstance(callback, PreemptionCallback):
                callback.release()


def preemption_requested(callbacks: Iterable[Any]) -> bool:
    """Whether a `PreemptionCallback` among `callbacks` has decided to stop (the same answer on every rank)."""
    return any(isinstance(c, PreemptionCallback) and c.stopped_step is not None for c in callbacks)


def raise_if_preempted(callbacks: Iterable[Any]) -> None:
    """Raise `Preempted` if a `PreemptionCallback` among `callbacks` stopped the training (after it returned).

    Raises:
        Preempted: the step stopped at and the checkpoint written.
    """
    for callback in callbacks:
        if isinstance(callback, PreemptionCallback) and callback.stopped_step is not None:
            raise Preempted(callback.stopped_step, callback.checkpoint)


def clear_preempted_marker(output_dir: str | Path | None) -> None:
    """Remove a previous run's `preempted.json` before a (re)run, so only this run's pre-emption is read."""
    if output_dir:
        (Path(output_dir) / PREEMPTED_FILE).unlink(missing_ok=True)


def was_preempted(output_dir: str | Path | None) -> bool:
    """Whether the run into `output_dir` stopped on a SIGTERM (its main process wrote `preempted.json`)."""
    return bool(output_dir) and (Path(output_dir) / PREEMPTED_FILE).is_file()


def read_preempted(output_dir: str | Path | None) -> Preempted | None:
    """The `Preempted` that the run into `output_dir` stopped with (from its `preempted.json`), or None.

    How a launcher whose ranks ran in other processes (torchrun's exit code after a SIGTERM says nothing of
    them) re-raises what the ranks' main process raised.
    """
    if not was_preempted(output_dir):
        return None
    record = json.loads((Path(output_dir) / PREEMPTED_FILE).read_text())  # type: ignore[arg-type]
    return Preempted(int(record["step"]), Path(record["checkpoint"]) if record.get("checkpoint") else None)


class StepPreempted(SystemExit):
    """A pipeline step's exit after a pre-emption: code `PREEMPTED_EXIT_CODE`, its message the `Preempted`'s.

    A `SystemExit`, so that the KFP executor running the step's function lets it through and its process exits
    with 75 rather than 1 with a traceback; KFP's retry then runs the same command, which resumes.
    """

    def __init__(self, preempted: Preempted) -> None:
        super().__init__(PREEMPTED_EXIT_CODE)
        self.preempted = preempted

    def __str__(self) -> str:
        return str(self.preempted)


@contextmanager
def exit_when_preempted(step: str) -> Iterator[None]:
    """Turn a `Preempted` raised in a pipeline step into `StepPreempted` (exit code 75), saying so on stderr.

    Args:
        step: the step's name, for the message.

    Raises:
        StepPreempted: the step was pre-empted; anything else passes through unchanged.
    """
    try:
        yield
    except Preempted as err:
        print(f"kubetune {step}: {err}", file=sys.stderr, flush=True)
        raise StepPreempted(err) from err
