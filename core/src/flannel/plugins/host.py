"""The plugin host: loads backend plugins from the ``flannel`` entry-point group.

Each entry point is loaded on its own, so one broken plugin never breaks the others: its
error is recorded (``flannel backends list`` shows it) and only matters if it provides the
configured backend. ``FLANNEL_LOAD_PLUGINS`` (comma list of entry-point names) loads only
those; ``FLANNEL_DISABLE_PLUGINS`` skips those. ``FLANNEL_TRACE_HOOKS=1`` logs every hook
call at debug level. The network hooks are called on the providing plugin only.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pluggy

from flannel import hookspecs
from flannel.backend import BackendContext, BackendError, BackendNetwork
from flannel.events import Event

__all__ = ["PluginError", "PluginHost", "PluginInfo", "pip_name"]

log = logging.getLogger("flannel.plugins")

LOAD_ENV = "FLANNEL_LOAD_PLUGINS"
DISABLE_ENV = "FLANNEL_DISABLE_PLUGINS"
TRACE_ENV = "FLANNEL_TRACE_HOOKS"

OK = "ok"
ERROR = "error"
DISABLED = "disabled"
CONFLICT = "conflict"


class PluginError(RuntimeError):
    """The configured backend cannot be provided (unknown, broken, disabled or ambiguous)."""


@dataclass
class PluginInfo:
    """One plugin as the host saw it: where it came from, what it provides, how it loaded."""

    name: str
    """Entry-point name (the plugin's name in the PluginManager)."""
    distribution: str = ""
    version: str = ""
    target: str = ""
    """Entry-point value, e.g. ``flannel.plugins.alloc``."""
    status: str = OK
    types: tuple[str, ...] = ()
    error: str = ""
    plugin: object | None = field(default=None, repr=False, compare=False)

    @property
    def label(self) -> str:
        """Human name: ``plugin 'vxlan' (flannel-vxlan 0.1.0)``."""
        dist = f"{self.distribution} {self.version}".strip() or "not from a distribution"
        return f"plugin {self.name!r} ({dist})"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "target": self.target,
            "status": self.status,
            "types": list(self.types),
            "error": self.error or None,
        }


def pip_name(backend_type: str) -> str:
    """The distribution that conventionally provides a type: ``host-gw`` -> flannel-hostgw."""
    return "flannel-" + _norm(backend_type)


def _norm(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "").replace(".", "")


def _env_list(env: Mapping[str, str], name: str) -> set[str] | None:
    if name not in env:
        return None
    return {item.strip() for item in env[name].split(",") if item.strip()}


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class PluginHost:
    """A typed facade over pluggy's PluginManager for flannel's backend hooks."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: list[PluginInfo] = []
        self._callers: dict[tuple[str, str], Any] = {}

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        env: Mapping[str, str] | None = None,
        entry_points: Iterable[importlib.metadata.EntryPoint] | None = None,
    ) -> PluginHost:
        """Load every plugin of the ``flannel`` group that the allow/block lists let through."""
        env = os.environ if env is None else env
        host = cls()
        if env.get(TRACE_ENV, "") not in ("", "0", "false"):
            host.pm.trace.root.setwriter(lambda msg: log.debug("hook %s", msg.rstrip()))
            host.pm.enable_tracing()
        allow = _env_list(env, LOAD_ENV)
        block = _env_list(env, DISABLE_ENV) or set()
        if entry_points is None:
            entry_points = importlib.metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP)
        for ep in sorted(entry_points, key=lambda e: e.name):
            info = PluginInfo(name=ep.name, target=ep.value)
            dist = getattr(ep, "dist", None)
            if dist is not None:
                info.distribution = dist.metadata["Name"] or dist.name
                info.version = dist.version
            if (allow is not None and ep.name not in allow) or ep.name in block:
                info.status = DISABLED
                env_name = DISABLE_ENV if ep.name in block else LOAD_ENV
                info.error = f"disabled by {env_name}"
                host.plugins.append(info)
                continue
            try:
                plugin = ep.load()
            except (Exception, SystemExit) as exc:
                host._fail(info, f"import failed: {_describe(exc)}")
                log.debug("plugin %s failed to import", ep.name, exc_info=True)
                continue
            host._register(info, plugin)
        host._mark_conflicts()
        return host

    def add(
        self, name: str, plugin: object, *, distribution: str = "", version: str = ""
    ) -> PluginInfo:
        """Register an already-imported plugin object (tests, embedding)."""
        info = PluginInfo(name=name, distribution=distribution, version=version)
        self._register(info, plugin)
        self._mark_conflicts()
        return info

    def _fail(self, info: PluginInfo, error: str) -> None:
        info.status = ERROR
        info.error = error
        self.plugins.append(info)
        log.debug("%s not loaded: %s", info.label, error)

    def _register(self, info: PluginInfo, plugin: object) -> None:
        try:
            self.pm.register(plugin, name=info.name)
        except Exception as exc:
            self._fail(info, f"invalid plugin: {_describe(exc)}")
            return
        try:
            info.types = self._validate(plugin)
        except Exception as exc:
            self.pm.unregister(plugin)
            self._fail(info, f"invalid plugin: {_describe(exc)}")
            return
        info.plugin = plugin
        self.plugins.append(info)

    def _validate(self, plugin: object) -> tuple[str, ...]:
        callers = self.pm.get_hookcallers(plugin) or []
        unknown = sorted(c.name for c in callers if c.spec is None)
        if unknown:
            known = ", ".join(n for n in dir(hookspecs) if _is_spec(getattr(hookspecs, n)))
            raise PluginError(
                f"implements hooks flannel does not define: {', '.join(unknown)} "
                f"(known hooks: {known})"
            )
        names = {c.name for c in callers}
        if "backend_types" not in names:
            raise PluginError("does not implement backend_types()")
        if "register_network" not in names:
            raise PluginError("does not implement register_network()")
        results = self._only(plugin, "backend_types")()
        provided = results[0] if results else ()
        if isinstance(provided, str) or not isinstance(provided, Sequence):
            raise PluginError(f"backend_types() must return a list of names, got {provided!r}")
        types: list[str] = []
        for item in provided:
            if not isinstance(item, str) or not item.strip():
                raise PluginError(f"backend_types() returned a bad type name: {item!r}")
            types.append(item.strip().lower())
        if not types:
            raise PluginError("backend_types() returned no types")
        return tuple(types)

    def _only(self, plugin: object, hook: str) -> Any:
        others = [p for p in self.pm.get_plugins() if p is not plugin]
        return self.pm.subset_hook_caller(hook, remove_plugins=others)

    def _mark_conflicts(self) -> None:
        for infos in self.providers().values():
            if len(infos) > 1:
                for info in infos:
                    info.status = CONFLICT
                    others = ", ".join(o.label for o in infos if o is not info)
                    info.error = f"a backend type is also provided by {others}"

    # -- queries ---------------------------------------------------------------------------

    def providers(self) -> dict[str, list[PluginInfo]]:
        """Backend type -> the loaded plugins claiming it (more than one is a conflict)."""
        out: dict[str, list[PluginInfo]] = {}
        for info in self.plugins:
            if info.plugin is None:
                continue
            for backend_type in info.types:
                out.setdefault(backend_type, []).append(info)
        return out

    def types(self) -> list[str]:
        return sorted(self.providers())

    def provider(self, backend_type: str) -> PluginInfo:
        """The one loaded plugin providing ``backend_type``; :class:`PluginError` otherwise."""
        wanted = backend_type.lower()
        claims = self.providers().get(wanted, [])
        if len(claims) == 1:
            return claims[0]
        if len(claims) > 1:
            names = " and ".join(c.label for c in claims)
            disable = ",".join(c.name for c in claims[1:])
            raise PluginError(
                f"backend type {wanted!r} is provided by {names}: uninstall one, or disable "
                f"one with {DISABLE_ENV}={disable}"
            )
        for info in self.plugins:
            if info.plugin is None and self._claims(info, wanted):
                if info.status == DISABLED:
                    raise PluginError(
                        f"backend type {wanted!r} needs {info.label}, which is {info.error}: "
                        f"allow it (check {LOAD_ENV} and {DISABLE_ENV})"
                    )
                raise PluginError(
                    f"backend type {wanted!r} is provided by {info.label}, which failed to load: "
                    f"{info.error}; fix or reinstall {info.distribution or info.name}"
                )
        installed = ", ".join(self.types()) or "none"
        broken = [i for i in self.plugins if i.status == ERROR]
        hint = ""
        if broken:
            hint = "; plugins that failed to load: " + "; ".join(
                f"{i.label}: {i.error}" for i in broken
            )
        raise PluginError(
            f"unknown backend type {wanted!r} (installed types: {installed}): install it with "
            f"`pip install {pip_name(wanted)}` or change Backend.Type in the network config"
            f"{hint}"
        )

    @staticmethod
    def _claims(info: PluginInfo, backend_type: str) -> bool:
        """Whether a plugin that did not load would (by naming convention) provide a type."""
        wanted = _norm(backend_type)
        return _norm(info.name) == wanted or _norm(info.distribution) == "flannel" + wanted

    # -- the network hooks -----------------------------------------------------------------

    def _caller(self, backend_type: str, hook: str) -> Any:
        info = self.provider(backend_type)
        key = (info.name, hook)
        caller = self._callers.get(key)
        if caller is None:
            caller = self._callers[key] = self._only(info.plugin, hook)
        return caller

    async def _call(self, which: str, hook: str, /, **kwargs: Any) -> Any:
        result = self._caller(which, hook)(**kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def register_network(self, backend_type: str, ctx: BackendContext) -> BackendNetwork:
        """Call ``register_network`` on the plugin providing ``backend_type`` only."""
        network = await self._call(backend_type, "register_network", backend_type=backend_type,
                                   ctx=ctx)  # fmt: skip
        if not isinstance(network, BackendNetwork):
            info = self.provider(backend_type)
            raise BackendError(
                f"{info.label} returned {type(network).__name__} from register_network, "
                "not a BackendNetwork: the plugin is broken, report it to its authors"
            )
        return network

    async def run(self, network: BackendNetwork) -> None:
        await self._call(network.ctx.backend_type, "run", network=network)

    async def handle_events(self, network: BackendNetwork, events: Sequence[Event]) -> None:
        await self._call(network.ctx.backend_type, "handle_events", network=network, events=events)


def _is_spec(obj: object) -> bool:
    return callable(obj) and hasattr(obj, hookspecs.PROJECT + "_spec")
