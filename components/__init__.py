"""KFP components: one thin wrapper per pipeline step (installed as `kubetune.components`).

The functions in this package are plain Python; `build(cfg)` turns them into KFP components
with the right base image — the light CPU image for validate/preprocess/export/register/
promote, the CUDA trainer image for training and evaluation — so image names come from one
place (the pipeline config, else the package version).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kfp import dsl

from kubetune.components.evaluate import evaluate, evaluate_with_reward
from kubetune.components.export import export
from kubetune.components.finalize import finalize
from kubetune.components.preprocess import preprocess
from kubetune.components.promote import promote
from kubetune.components.register import register
from kubetune.components.train import dpo, kto, ppo, pt, rm, sft
from kubetune.components.validate import validate

RUNTIME_STEPS = {"validate": validate, "preprocess": preprocess, "export": export, "register": register,
                 "promote": promote, "finalize": finalize}
TRAINER_STEPS = {"sft": sft, "pt": pt, "rm": rm, "dpo": dpo, "kto": kto, "ppo": ppo, "evaluate": evaluate,
                 "evaluate_with_reward": evaluate_with_reward}


@dataclass(frozen=True)
class Components:
    """The built components, by step name (attribute access: `c.sft`, `c.validate`, ...)."""

    steps: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.steps[name]
        except KeyError:
            raise AttributeError(name) from None


def build(runtime_image: str, trainer_image: str) -> Components:
    """Decorate every step as a `@dsl.component` on its image (kfp.local ignores the image)."""
    steps: dict[str, Any] = {}
    for name, func in RUNTIME_STEPS.items():
        steps[name] = dsl.component(func, base_image=runtime_image, install_kfp_package=False)
    for name, func in TRAINER_STEPS.items():
        steps[name] = dsl.component(func, base_image=trainer_image, install_kfp_package=False)
    return Components(steps)
