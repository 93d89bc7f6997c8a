"""What plugins registered: components by kind and name, with their origin."""

from __future__ import annotations

import difflib
import inspect
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from .params import NoParams

KINDS = ("model", "loss", "data_source", "unlabeled_source", "selection", "method", "callback", "modality")


class MentorDeprecationWarning(FutureWarning):
    """A plugin uses a form of the API that still works but will not always: the message says what to change.
    (A FutureWarning, so that Python shows it to the person running mentor, not only to test runners.)"""


class PluginConflict(Exception):
    """Two plugins registered the same component name."""


class UnknownComponent(KeyError):
    def __init__(self, kind: str, name: str, known: list[str]):
        self.kind, self.name, self.known = kind, name, known
        super().__init__(str(self))

    def __str__(self) -> str:
        return unknown_name_message(self.kind.replace("_", " "), self.name, self.known)


def unknown_name_message(what: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown {what} '{name}'{hint} (known: {', '.join(sorted(known)) or 'none'})"


@dataclass(frozen=True)
class Component:
    kind: str
    name: str
    factory: Callable[..., Any]
    params: type[BaseModel]
    description: str
    plugin: str  # the plugin module's registered name
    package: str  # the distribution that ships it ("mentor" for built-ins)
    # a model's own input pipeline where its params imply one (pretrained weights and their transforms):
    # preprocess(**params) -> {image_size, channels, mean, std, classes} (any of them) or None
    preprocess: Callable[..., dict | None] | None = None
    # a method's targets: "example" (one class per example), "token" (one per token), or both
    targets: frozenset[str] = frozenset({"example"})

    @property
    def takes_image_size(self) -> bool:
        """Whether this (model) factory declares an ``image_size`` keyword: it is then given the input's
        (height, width), for architectures whose layers depend on it (a ViT's patch grid, an MLP)."""
        try:
            return "image_size" in inspect.signature(self.factory).parameters
        except (TypeError, ValueError):  # a builtin or C callable without a signature
            return False

    def make_model(self, num_classes: int, in_channels: int, image_size: tuple[int, int], /, **params):
        """Call a model factory: classes and channels, and the image size if it asks for it (a value
        the experiment file set in ``params`` wins). Positional-only, so a plugin whose params model
        declares its own ``image_size`` (the documented way before mentor passed it) is not a TypeError."""
        if self.takes_image_size and "image_size" not in params:
            params["image_size"] = tuple(image_size)
        return self.factory(num_classes, in_channels, **params)

    def input_pipeline(self, **params) -> dict | None:
        """The input pipeline that ``params`` imply (pretrained weights' transforms), or None."""
        return self.preprocess(**params) if self.preprocess is not None else None

    def build(self, *args, **params):
        """Validate ``params`` with the component's model and call its factory."""
        values = self.params.model_validate(params).model_dump()
        return self.factory(*args, **values)


@dataclass
class Registry:
    """Components from every loaded plugin, by kind then name."""

    components: dict[str, dict[str, Component]] = field(
        default_factory=lambda: {k: {} for k in KINDS}
    )

    def add(self, component: Component) -> None:
        table = self.components[component.kind]
        other = table.get(component.name)
        if other is not None:
            raise PluginConflict(
                f"{component.kind.replace('_', ' ')} '{component.name}' is registered twice: "
                f"by package '{other.package}' (plugin {other.plugin}) and by package "
                f"'{component.package}' (plugin {component.plugin}). Uninstall one of them."
            )
        table[component.name] = component

    def get(self, kind: str, name: str) -> Component:
        table = self.components[kind]
        if name not in table:
            raise UnknownComponent(kind, name, list(table))
        return table[name]

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])

    def all(self) -> list[Component]:
        return [c for kind in KINDS for c in self.components[kind].values()]

    def registrar(self, kind: str, plugin: str, package: str) -> Callable[..., None]:
        """The ``register`` callback handed to one plugin's registration hook."""

        def register(name: str, factory: Callable[..., Any], params: type[BaseModel] | None = None,
                     description: str | None = None, *, preprocess: Callable[..., dict | None] | None = None,
                     targets: Iterable[str] | None = None) -> None:
            if not isinstance(name, str) or not name:
                raise TypeError(f"plugin {plugin}: component names must be non-empty strings")
            if params is None:
                params = NoParams
            if not (inspect.isclass(params) and issubclass(params, BaseModel)):
                raise TypeError(f"plugin {plugin}: params for '{name}' must be a pydantic model class")
            if description is None:
                doc = inspect.getdoc(factory) or ""
                description = doc.splitlines()[0] if doc else ""
            if preprocess is not None and kind != "model":
                raise TypeError(f"plugin {plugin}: only a model may register a preprocess function ('{name}')")
            said = frozenset(targets if targets is not None else ("example",))
            if targets is not None and (kind != "method" or not said or not said <= {"example", "token"}):
                raise TypeError(f"plugin {plugin}: '{name}': targets= is for methods: 'example', 'token' or both")
            component = Component(kind, name, factory, params, description, plugin, package, preprocess, said)
            if kind == "model" and "image_size" in params.model_fields and component.takes_image_size:
                warnings.warn(
                    f"plugin {plugin} (package {package}), model '{name}': its params model declares image_size, "
                    "so the factory gets that value, not the data's (height, width). mentor now gives a model "
                    "factory that declares an image_size keyword the input's size itself: remove image_size "
                    "from the params model (an experiment file may still set it in params). This still works "
                    "as before; docs/plugins.md, 'Changes'.", MentorDeprecationWarning, stacklevel=2)
            self.add(component)

        return register
