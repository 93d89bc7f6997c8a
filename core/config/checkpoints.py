"""What ``mentor validate`` can tell about a checkpoint file without the data: that it opens, where its
state_dict is, and that its key names are the model's.

The number of classes and channels is known only once the data loads, so
shapes (a head for other classes) are checked at the start of ``mentor run``,
before any stage trains (``ExperimentRunner._check_weights``). Names do not
depend on either: a model built on the meta device with placeholder classes
and channels has the same keys, at no memory and no download.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..registry import Registry
from ..state_dicts import WeightsMismatch, find_state_dict, mismatch, strip_wrapper_prefix
from .schema import ModelSpec


def _open(path: str):
    import torch

    try:  # memory-mapped: a large file is not read to check its key names
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # the legacy (non-zip) format cannot be mapped
        return torch.load(path, map_location="cpu", weights_only=True)


def checkpoint_problems(spec: ModelSpec, registry: Registry) -> Iterator[tuple[str, str]]:
    """(field, message) for each thing wrong with ``spec.checkpoint`` that shows without the data."""
    try:
        saved = _open(spec.checkpoint)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same problem for the user
        yield "checkpoint", f"not a readable checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        return
    try:
        state = find_state_dict(saved, spec.checkpoint_key)
    except WeightsMismatch as exc:
        yield ("checkpoint_key" if spec.checkpoint_key else "checkpoint"), f"{spec.checkpoint}: {exc}"
        return
    if spec.name is None:
        return
    expected = _names(spec, registry)
    if expected is None:
        return
    problem = mismatch(strip_wrapper_prefix(state, expected), dict.fromkeys(expected), shapes=False)
    if problem is not None:
        yield "checkpoint", f"{spec.checkpoint}: weights do not fit models.{spec.name}: {problem}"


def _names(spec: ModelSpec, registry: Registry) -> set[str] | None:
    """The state_dict keys of the spec's model, built on the meta device; None when it cannot be built
    here (the run's own check reports it)."""
    import torch

    params = {k: v for k, v in spec.params.items() if k != "weights"}  # no download to learn names
    try:
        with torch.device("meta"):
            model = registry.get("model", spec.name).make_model(10, 3, (32, 32), **params)
    except Exception:  # noqa: BLE001 - a factory that needs real tensors or the real data
        return None
    return set(model.state_dict())
