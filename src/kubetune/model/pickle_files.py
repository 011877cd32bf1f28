"""Which model folders hold their weights only as pickles (torch.load), which `allow_pickle` must allow.

A pickle is a program: unpickling a checkpoint can run any code its author put in it. transformers loads
`pytorch_model.bin` with `torch.load(weights_only=True)`, which refuses most of that, but a model folder
that also ships safetensors never needs it. kubetune refuses a folder whose weights are pickles only,
unless `allow_pickle: true`, naming the file. Torch-free, so preflight (`kubetune.validate`) can use it.
"""

from __future__ import annotations

from pathlib import Path

# weight files transformers reads with torch.load; the safetensors names are read without unpickling
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth", "model.ckpt")
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


def pickle_only_weights(folder: str | Path) -> Path | None:
    """The pickle weight file of a model folder that has no safetensors weights, or None.

    Args:
        folder: a local model directory (anything else, including a hub id, gives None).

    Returns:
        The first of `PICKLE_WEIGHTS` (or `pytorch_model-*.bin` shard) present, when none of `SAFE_WEIGHTS`
        (nor a `*.safetensors` shard) is; None for a folder with safetensors, with no weights, or not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    if any((folder / name).is_file() for name in SAFE_WEIGHTS) or any(folder.glob("*.safetensors")):
        return None
    for name in PICKLE_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    return next(iter(sorted(folder.glob("pytorch_model-*.bin"))), None)


def pickle_refusal(weights: Path) -> tuple[str, str]:
    """(what is wrong, what to do) for a pickle-only checkpoint, naming the file and the key that allows it."""
    return (f"its weights are only a pickle ({weights}), and loading a pickle can run code its author put in it",
            "convert it to safetensors (load it once where you trust it, then save_pretrained(..., "
            "safe_serialization=True)), or set allow_pickle: true if you trust its source")
