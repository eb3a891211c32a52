"""``python -m flannel ...`` is the ``flannel`` command (used by the lab to run daemons with
the same interpreter, whatever PATH holds inside a namespace)."""

from flannel.cli.entry import main

raise SystemExit(main())
