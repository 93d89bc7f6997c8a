"""Intermediate outputs by node name, without changing the model.

torchvision's feature extraction traces a model with torch.fx and returns the
outputs of the named nodes ("layer2", "layer3.0.add", ...). A model that FX
cannot trace (data-dependent control flow) still works when the requested
names are modules: then forward hooks collect their outputs. Only the nodes
some loss asked for are extracted.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import torch
from torch import nn


class FeatureError(ValueError):
    """A requested node does not exist or the model cannot be tapped."""


def node_names(model: nn.Module) -> list[str]:
    """The model's node names in execution order (training-mode graph)."""
    from torchvision.models.feature_extraction import get_graph_node_names

    try:
        train_nodes, _ = get_graph_node_names(model)
    except Exception:  # not FX-traceable: fall back to module names
        return [name for name, _ in model.named_modules() if name]
    return train_nodes


def _check(model: nn.Module, nodes: Sequence[str], names: list[str], what: str) -> None:
    modules = {name for name, _ in model.named_modules() if name}
    for node in nodes:
        if node in names or node in modules or any(n.startswith(node + ".") for n in names):
            continue
        close = difflib.get_close_matches(node, sorted(set(names) | modules), n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise FeatureError(f"unknown {what} node '{node}'{hint} (`mentor layers` lists them)")


class FeatureTap(nn.Module):
    """``tap(x) -> (logits, {node: output})`` for a model, sharing its parameters.

    The tapped graph reuses the model's own leaf modules, so training through
    the tap trains the model, and the model itself (what gets exported) is
    never modified.
    """

    def __init__(self, model: nn.Module, nodes: Sequence[str], what: str = "model"):
        super().__init__()
        self.model = model
        inner = _inner(model)  # a model behind its own input pipeline (mentor.WithInput): its nodes, its input
        model = inner
        self.nodes = tuple(dict.fromkeys(nodes))
        self._graph = None
        self._hooked: list[nn.Module] = []
        self._captured: dict[str, torch.Tensor] = {}
        if not self.nodes:
            return
        names = node_names(model)
        _check(model, self.nodes, names, what)
        from torchvision.models.feature_extraction import create_feature_extractor

        try:
            returns = {node: node for node in self.nodes}
            self._last = names[-1]
            returns[self._last] = "__logits__"
            self._graph = create_feature_extractor(model, return_nodes=returns)
        except Exception as exc:
            modules = dict(model.named_modules())
            missing = [n for n in self.nodes if n not in modules]
            if missing:
                raise FeatureError(
                    f"{what}: cannot trace it with torch.fx ({type(exc).__name__}: {exc}); "
                    f"only module names can be tapped then, not {missing}"
                ) from None
            self._hooked = [modules[node] for node in self.nodes]  # hooked during the tap's own calls only

    def _capture(self, node: str):
        def hook(module, inputs, output):
            self._captured[node] = output

        return hook

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        wrapped = self.model is not _inner(self.model)
        if wrapped:
            x = self.model.adapt_input(x)
        logits, features = self._tap(x)
        return (self.model.adapt_output(logits) if wrapped else logits), features

    def _tap(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self._graph is not None:
            self._graph.train(self.model.training)
            out = self._graph(x)
            logits = out.pop("__logits__")
            if self._last in self.nodes:  # the output node itself was asked for
                out[self._last] = logits
            return logits, out
        self._captured = {}
        hooks = [module.register_forward_hook(self._capture(node))
                 for node, module in zip(self.nodes, self._hooked, strict=True)]
        try:  # the model as it ships carries no hook: a later forward (export, the report's timing) runs bare
            logits = _inner(self.model)(x)
        finally:
            for hook in hooks:
                hook.remove()
        features, self._captured = self._captured, {}
        return logits, features


def _inner(model: nn.Module) -> nn.Module:
    """The model itself, where it sits behind its input pipeline (``WithInput.inner``)."""
    return model.inner if hasattr(model, "adapt_input") and hasattr(model, "inner") else model


@torch.no_grad()
def probe(model: nn.Module, example: torch.Tensor, nodes: Sequence[str] | None = None) -> dict[str, torch.Size]:
    """Output shapes of ``nodes`` (all nodes if None) for ``example``, in eval mode.

    Eval mode keeps BatchNorm statistics untouched; the model's mode is restored.
    """
    if nodes is None:
        nodes = [n for n in node_names(_inner(model)) if n != "x"]  # the input placeholder is not an output
    was_training = model.training
    model.eval()
    try:
        tap = FeatureTap(model, nodes)
        logits, features = tap(example)
    finally:
        model.train(was_training)
    return {node: features[node].shape for node in tap.nodes if isinstance(features.get(node), torch.Tensor)}
