"""Loading plugins: built-ins and third-party packages alike, via entry points.

Every plugin is a module registered under the ``mentor`` entry-point group
(built-ins too, in mentor's own pyproject.toml). We read the entry points
ourselves rather than through ``pluggy.load_setuptools_entrypoints`` because
that call silently skips a second entry point with the same name; here every
module loads and a component name claimed twice is a located error.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType

import pluggy

from . import hookspecs
from .registry import Registry

ENTRY_POINT_GROUP = "mentor"

_REGISTRATION_HOOKS = {
    "register_models": "model",
    "register_losses": "loss",
    "register_data_sources": "data_source",
    "register_unlabeled_sources": "unlabeled_source",
    "register_selection_strategies": "selection",
    "register_methods": "method",
    "register_callbacks": "callback",
    "register_modalities": "modality",
}


class PluginError(Exception):
    """A plugin could not be loaded or registered something invalid."""


@dataclass
class Plugins:
    """The loaded plugin manager and the components it registered."""

    manager: pluggy.PluginManager
    registry: Registry
    packages: dict[str, str]  # plugin name -> distribution name

    @property
    def hook(self):
        return self.manager.hook


def _entry_points() -> list[tuple[metadata.EntryPoint, str]]:
    found = []
    for dist in metadata.distributions():
        for ep in dist.entry_points:
            if ep.group == ENTRY_POINT_GROUP:
                found.append((ep, dist.metadata["Name"]))
    # de-duplicate (a dist can be visible twice on sys.path) and keep a stable order
    unique = {(ep.value, pkg): (ep, pkg) for ep, pkg in found}
    return sorted(unique.values(), key=lambda item: (item[1] != "mentor", item[1], item[0].name))


def load_plugins(extra: Iterable[ModuleType | object] = (), entry_points: bool = True) -> Plugins:
    """Load every plugin and collect its components.

    ``extra`` are plugin objects registered in-process after the entry points
    (tests, notebooks); their package is reported as ``<in-process>``.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    packages: dict[str, str] = {}
    if entry_points:
        for ep, package in _entry_points():
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken third-party package must say who it is
                raise PluginError(
                    f"plugin '{ep.name}' = '{ep.value}' from package '{package}' failed to load: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            name = getattr(plugin, "__name__", ep.value)
            if pm.get_plugin(name) is None:
                pm.register(plugin, name=name)
                packages[name] = package
    for plugin in extra:
        name = pm.register(plugin)
        packages[name] = "<in-process>"
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"{exc} (valid hooks: {', '.join(_hook_names())})") from exc

    registry = Registry()
    for hook_name, kind in _REGISTRATION_HOOKS.items():
        caller = getattr(pm.hook, hook_name)
        # registration order, so that errors name the first registrant first
        for impl in reversed(caller.get_hookimpls()):
            package = packages.get(impl.plugin_name, "<unknown>")
            impl.function(register=registry.registrar(kind, impl.plugin_name, package))
    return Plugins(pm, registry, packages)


def _hook_names() -> list[str]:
    return [n for n in dir(hookspecs) if n.startswith(("register_", "on_"))]


@functools.lru_cache(maxsize=1)
def default_plugins() -> Plugins:
    """The plugins installed in this environment (loaded once per process)."""
    return load_plugins()
