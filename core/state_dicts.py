"""Weights saved by someone else's script, fitted to a model or explained.

Why: a checkpoint a user brings is rarely a bare state_dict of exactly the
model's keys. Training scripts save ``{"epoch": ..., "model_state_dict": ...}``,
DDP prefixes every key with ``module.``, Lightning with ``model.``,
``torch.compile`` with ``_orig_mod.``, and a model trained on other classes
has another head. PyTorch's own error lists dozens of keys; these say what is
wrong in one line and what to write instead. Pure functions over names and
shapes, so ``mentor validate`` can use them without building anything real.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

#: key prefixes that wrappers add: DDP and DataParallel, Lightning modules, torch.compile
WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")
#: where mentor's and common checkpoints keep the state_dict, tried in order
KNOWN_KEYS = ("state_dict", "model")


class WeightsMismatch(ValueError):
    """Saved weights that do not fit the model, or no state_dict where one was expected; the message says
    what was found and what to change."""


def is_state_dict(value: Any) -> bool:
    """A mapping of tensors; an empty one is the state_dict of a module without parameters (a loss)."""
    return isinstance(value, Mapping) and all(isinstance(v, torch.Tensor) for v in value.values())


def _keys(saved: Mapping, n: int = 6) -> str:
    names = [str(k) for k in saved]
    return ", ".join(names[:n]) + (f" (and {len(names) - n} more)" if len(names) > n else "")


def find_state_dict(saved: Any, key: str | None = None) -> Mapping[str, torch.Tensor]:
    """The state_dict in a loaded checkpoint: the entry ``key`` names, the object itself, or its
    'state_dict' / 'model' entry. Raises ``WeightsMismatch`` naming the keys found, and the one that
    holds tensors, when none of those is a state_dict."""
    if key is not None:
        if not isinstance(saved, Mapping) or key not in saved:
            found = f"found keys {_keys(saved)}" if isinstance(saved, Mapping) else f"it holds a {type(saved).__name__}"
            raise WeightsMismatch(f"checkpoint_key '{key}' is not in the checkpoint ({found})")
        if not is_state_dict(saved[key]):
            raise WeightsMismatch(f"checkpoint_key '{key}' holds a {type(saved[key]).__name__}, not a state_dict")
        return saved[key]
    if is_state_dict(saved):
        return saved
    if not isinstance(saved, Mapping):
        raise WeightsMismatch(f"it holds a {type(saved).__name__}, not a state_dict")
    for known in KNOWN_KEYS:
        if is_state_dict(saved.get(known)):
            return saved[known]
    candidates = [str(k) for k, v in saved.items() if v and is_state_dict(v)]
    hint = f": did you mean `checkpoint_key: {candidates[0]}`?" if candidates else " and none of them holds weights"
    raise WeightsMismatch(f"found keys {_keys(saved)}, not a state_dict{hint}")


def strip_wrapper_prefix(state: Mapping[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """``state`` with the wrapper prefix removed whose removal matches the most of ``expected`` (none if
    the keys already match best)."""
    best, best_hits = dict(state), len(expected & set(state))
    for prefix in WRAPPER_PREFIXES:
        if not any(k.startswith(prefix) for k in state):
            continue
        stripped = {k.removeprefix(prefix): v for k, v in state.items()}
        hits = len(expected & set(stripped))
        if hits > best_hits:
            best, best_hits = stripped, hits
    return best


def _shape(t) -> tuple[int, ...]:
    return tuple(t.shape)


def mismatch(state: Mapping[str, Any], expected: Mapping[str, Any], *, shapes: bool = True) -> str | None:
    """One line saying how ``state`` does not fit ``expected`` (both name -> tensor or shape), or None.

    A head trained for another number of classes (only the last layer's first dimension differs) is
    said as such; otherwise the missing and unexpected keys and the differing shapes, the first few.
    ``shapes=False`` compares the names only (a model built with placeholder classes and channels)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    differ = [k for k in expected if shapes and k in state and _shape(state[k]) != _shape(expected[k])]
    if not (missing or unexpected or differ):
        return None
    if not missing and not unexpected and _only_the_head(differ, state, expected):
        layer = differ[0].rsplit(".", 1)[0]
        saved, wanted = _shape(state[differ[0]])[0], _shape(expected[differ[0]])[0]
        return (f"it was trained for {saved} classes, the model has {wanted} (the data's): its head {layer} has "
                f"{saved} outputs; use a checkpoint trained on these classes, or train a stage from it with "
                "`init:` and a new head")
    parts = []
    if missing:
        parts.append(f"{len(missing)} of the model's keys are missing ({', '.join(missing[:4])}"
                     + (", ..." if len(missing) > 4 else "") + ")")
    if unexpected:
        parts.append(f"{len(unexpected)} keys are not the model's ({', '.join(unexpected[:4])}"
                     + (", ..." if len(unexpected) > 4 else "") + ")")
    if differ:
        shown = [f"{k} {_shape(state[k])} vs the model's {_shape(expected[k])}" for k in differ[:3]]
        parts.append(f"{len(differ)} shapes differ ({'; '.join(shown)}" + ("; ..." if len(differ) > 3 else "") + ")")
    hint = ""
    if missing and unexpected and len(missing) == len(unexpected):
        hint = "; is it another architecture, or other `params`?"
    return "; ".join(parts) + hint


def _only_the_head(differ: list[str], state: Mapping, expected: Mapping) -> bool:
    """Whether the differing tensors are one layer's (weight and bias) and differ in their first dimension."""
    layers = {k.rsplit(".", 1)[0] for k in differ}
    if len(layers) != 1:
        return False
    last = [k for k in expected if _shape(expected[k])][-2:]  # a classifier's weight and bias come last
    if not set(differ) <= set(last):
        return False
    return all(_shape(state[k])[1:] == _shape(expected[k])[1:] and len(_shape(state[k])) == len(_shape(expected[k]))
               for k in differ)
