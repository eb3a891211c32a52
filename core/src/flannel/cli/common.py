"""Shared CLI plumbing: the etcd connection flags, one-line errors, signals, exit codes.

Exit codes of every ``flannel`` command: 0 success (or stopped by SIGTERM/SIGINT),
1 failure (the message says what and what to do), 2 usage error.
"""

import asyncio
import functools
import inspect
import signal
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from flannel.options import DEFAULT_ETCD_ENDPOINTS, DEFAULT_ETCD_PREFIX

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class State:
    """Global flags of the ``flannel`` command (set by the app callback)."""

    verbose: int = 0


class CliError(Exception):
    """A failure to report as one line (exit 1)."""


def fail(message: str) -> NoReturn:
    """Print ``flannel: error: message`` to stderr and exit 1."""
    print(f"flannel: error: {message}", file=sys.stderr)
    raise typer.Exit(EXIT_FAILURE)


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def handle_errors(func: Callable[..., T]) -> Callable[..., T]:
    """Turn exceptions into a one-line error and exit 1 (traceback with ``flannel -v``)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            raise typer.Exit(EXIT_OK) from None
        except Exception as exc:
            if State.verbose:
                import traceback

                traceback.print_exc()
            prefix = "" if isinstance(exc, CliError) else _kind(exc)
            fail(prefix + _one_line(exc))

    return wrapper


def _kind(exc: BaseException) -> str:
    from flannel.config import ConfigError
    from flannel.manager import SubnetManagerError

    if isinstance(exc, ConfigError | SubnetManagerError | OSError | ValueError):
        return ""
    return f"{type(exc).__name__}: "


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro``; SIGTERM/SIGINT cancel it and the command exits 0."""

    async def main() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        stopped = False

        def stop() -> None:
            nonlocal stopped
            stopped = True
            task.cancel()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        try:
            return await coro
        except (Exception, asyncio.CancelledError):
            # a library may turn our cancellation into its own error (grpc: CANCELLED)
            if stopped:
                raise typer.Exit(EXIT_OK) from None
            raise

    return asyncio.run(main())


# -- etcd connection flags -------------------------------------------------------------------


@dataclass
class EtcdFlags:
    endpoints: str = ",".join(DEFAULT_ETCD_ENDPOINTS)
    prefix: str = DEFAULT_ETCD_PREFIX
    keyfile: str = ""
    certfile: str = ""
    cafile: str = ""
    username: str = ""
    password: str = ""
    lease_ttl: int = 86400

    def manager(self) -> Any:
        """An :class:`~flannel.etcd_manager.EtcdSubnetManager` for these flags."""
        from flannel.etcd import EtcdClientConfig
        from flannel.etcd_manager import EtcdSubnetManager

        client = EtcdClientConfig.from_flags(
            self.endpoints,
            ca_file=self.cafile,
            cert_file=self.certfile,
            key_file=self.keyfile,
            username=self.username,
            password=self.password,
        )
        return EtcdSubnetManager(client, self.prefix, lease_ttl=self.lease_ttl)


def _opt(flag: str, help: str, secret: bool = False) -> Any:
    env = "FLANNELD_" + flag.upper().replace("-", "_")
    return typer.Option(
        f"--{flag}",
        envvar=env,
        help=help,
        rich_help_panel="etcd connection",
        show_default=not secret,
    )


_ETCD_PARAMS = [
    inspect.Parameter(
        "etcd_endpoints", inspect.Parameter.KEYWORD_ONLY, default=EtcdFlags.endpoints,
        annotation=Annotated[str, _opt("etcd-endpoints", "comma-separated etcd endpoints")],
    ),
    inspect.Parameter(
        "etcd_prefix", inspect.Parameter.KEYWORD_ONLY, default=EtcdFlags.prefix,
        annotation=Annotated[str, _opt("etcd-prefix", "etcd prefix of the network")],
    ),
    inspect.Parameter(
        "etcd_keyfile", inspect.Parameter.KEYWORD_ONLY, default="",
        annotation=Annotated[str, _opt("etcd-keyfile", "client key file for etcd TLS")],
    ),
    inspect.Parameter(
        "etcd_certfile", inspect.Parameter.KEYWORD_ONLY, default="",
        annotation=Annotated[str, _opt("etcd-certfile", "client certificate for etcd TLS")],
    ),
    inspect.Parameter(
        "etcd_cafile", inspect.Parameter.KEYWORD_ONLY, default="",
        annotation=Annotated[str, _opt("etcd-cafile", "CA that verifies the etcd server")],
    ),
    inspect.Parameter(
        "etcd_username", inspect.Parameter.KEYWORD_ONLY, default="",
        annotation=Annotated[str, _opt("etcd-username", "etcd username")],
    ),
    inspect.Parameter(
        "etcd_password", inspect.Parameter.KEYWORD_ONLY, default="",
        annotation=Annotated[str, _opt("etcd-password", "etcd password", secret=True)],
    ),
]  # fmt: skip


def with_etcd(func: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """Give an async command the etcd flags (also from ``FLANNELD_*``) as ``etcd=EtcdFlags``,
    run it with :func:`run_async` and report errors as one line."""
    sig = inspect.signature(func, eval_str=True)
    params = [p for p in sig.parameters.values() if p.name != "etcd"]

    @handle_errors
    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> T:
        flags = EtcdFlags(
            endpoints=kwargs.pop("etcd_endpoints"),
            prefix=kwargs.pop("etcd_prefix"),
            keyfile=kwargs.pop("etcd_keyfile"),
            certfile=kwargs.pop("etcd_certfile"),
            cafile=kwargs.pop("etcd_cafile"),
            username=kwargs.pop("etcd_username"),
            password=kwargs.pop("etcd_password"),
        )
        return run_async(func(etcd=flags, **kwargs))

    new_sig = sig.replace(parameters=[*params, *_ETCD_PARAMS])
    wrapper.__signature__ = new_sig  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in new_sig.parameters.values()}
    del wrapper.__wrapped__  # type: ignore[attr-defined]
    return wrapper
