"""``flannel``: ``run`` goes to the lean daemon path, everything else to the typer app.

The dispatch happens before typer is imported, so ``flannel run`` starts as fast as
``flanneld`` and never loads typer, rich or pydantic.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "run":
        from flannel.cli.flanneld import run

        return run(args[1:], prog="flannel run")
    from flannel.cli.app import run_app

    return run_app(args)


if __name__ == "__main__":
    raise SystemExit(main())
