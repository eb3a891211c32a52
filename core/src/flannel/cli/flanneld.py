"""``flanneld`` and ``flannel run``: the daemon's command line (lean: no typer, no rich)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from flannel import __version__
from flannel.options import HelpRequested, UsageError, parse_args, usage

EXIT_USAGE = 2


def run(argv: Sequence[str], prog: str = "flanneld") -> int:
    """Parse ``argv`` (flags only), run the daemon and return the exit code."""
    try:
        opts = parse_args(argv)
    except HelpRequested:
        sys.stderr.write(usage(prog))
        return 0
    except UsageError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if opts.version:
        # flanneld prints its version to stderr; plugin versions: `flannel --version`.
        print(f"flannel {__version__}", file=sys.stderr)
        return 0
    from flannel.daemon import configure_logging, run_daemon

    configure_logging(opts)
    return run_daemon(opts, prog=prog)


def main() -> int:
    """Console script ``flanneld``: a drop-in for the Go binary's command line."""
    return run(sys.argv[1:], prog="flanneld")


if __name__ == "__main__":
    raise SystemExit(main())
