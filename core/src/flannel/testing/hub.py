"""Run a helper process (a cloud API fake, say) inside a lab's hub namespace.

The daemons live in host namespaces and reach only the hub (198.18.0.1), so whatever they
must talk to runs there. The script is started with ``ip netns exec <hub>``, writes
``--ready FILE`` (JSON) once it serves, is stopped by PID, and can be queried from the test
process by running a tiny HTTP GET inside the hub.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["HubProcess"]

_GET_JSON = (
    "import sys, urllib.request\n"
    "opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))\n"
    "sys.stdout.write(opener.open(sys.argv[1], timeout=20).read().decode())\n"
)


class HubProcess:
    """``python SCRIPT --ready FILE ARGS...`` in namespace ``hub``; ``label`` names it in
    errors and in its log file (``<workdir>/<label>.log``)."""

    def __init__(
        self,
        hub: str,
        workdir: Path,
        script: str,
        args: Sequence[str],
        *,
        label: str,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.hub = hub
        self.script = script
        self.args = list(args)
        self.label = label
        self.ready = workdir / f"{label}.ready"
        self.log = workdir / f"{label}.log"
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> Any:
        """Start it, wait until it wrote its ready file, return that file's JSON."""
        self.ready.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        argv = ["ip", "netns", "exec", self.hub, sys.executable, self.script,
                "--ready", str(self.ready), *self.args]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**env, **self.env}, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self.ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{self.label} did not start in {self.hub}:\n{tail}")
            time.sleep(0.1)
        return json.loads(self.ready.read_text())

    def stop(self) -> None:
        """SIGTERM our process (by PID), then SIGKILL if it lingers."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def get_json(self, url: str) -> Any:
        """GET ``url`` from inside the hub (the test process is outside the lab)."""
        done = subprocess.run(
            ["ip", "netns", "exec", self.hub, sys.executable, "-c", _GET_JSON, url],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"GET {url} in {self.hub} failed: {done.stderr.strip()}")
        return json.loads(done.stdout)
