"""Copying checkpoint tensors, by their Hugging Face names, into the model's own tensors.

A model describes itself as a map from each HF name it expects to the destination tensor
(often a slice of a fused weight); `load_named_tensors` checks every name and shape and
says exactly what was missing, unexpected or the wrong shape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch


class WeightLoadError(ValueError):
    """The checkpoint does not match the model its config describes."""


def load_named_tensors(destinations: Mapping[str, torch.Tensor],
                       weights: Iterable[tuple[str, torch.Tensor]], *,
                       ignore: Callable[[str], bool] = lambda name: False) -> None:
    loaded: set[str] = set()
    with torch.no_grad():
        for name, tensor in weights:
            if ignore(name):
                continue
            dest = destinations.get(name)
            if dest is None:
                raise WeightLoadError(
                    f"unexpected tensor {name!r} in the checkpoint: the model's config does not "
                    "describe it (wrong architecture or config.json?)")
            if tuple(tensor.shape) != tuple(dest.shape):
                raise WeightLoadError(
                    f"tensor {name!r} has shape {tuple(tensor.shape)} but the config implies "
                    f"{tuple(dest.shape)}")
            if name in loaded:
                raise WeightLoadError(f"tensor {name!r} appears twice in the checkpoint")
            dest.copy_(tensor)
            loaded.add(name)
    missing = sorted(set(destinations) - loaded)
    if missing:
        shown = ", ".join(repr(n) for n in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise WeightLoadError(f"the checkpoint lacks {len(missing)} tensor(s) the model needs: "
                              f"{shown}{more}")
