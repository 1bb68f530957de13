"""`python -m lake_assets.dev`: the Dagster UI and daemon over the lake (what `make ui` runs).

    python -m lake_assets.dev [--host 127.0.0.1] [--port 3000]

Runs `dagster dev` for the code location of workspace.yaml with the lake's instance: its
dagster.yaml written into $DAGSTER_HOME first, and launched from that directory, where Dagster
looks for it (a dagster.yaml in the current folder that is not DAGSTER_HOME's makes it warn that
the file is ignored). The lake's settings are passed down resolved, so the code server, the daemon
and every run see the same lake wherever the command was started.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from lake_assets.core.settings import REPO_ROOT, current_settings
from lake_assets.instance import prepare_dagster_home

WORKSPACE = REPO_ROOT / "workspace.yaml"


def dev_command(host: str, port: int) -> tuple[list[str], dict[str, str], Path]:
    """(argv, environment, working directory) of `dagster dev` for the lake."""
    settings = current_settings()
    home = prepare_dagster_home(settings)
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, **settings.to_env(), "DAGSTER_HOME": str(home),
           # the code location imports lake_assets from this checkout, whatever the current folder
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *([path] if path else [])])}
    dagster = Path(sys.executable).parent / "dagster"
    argv = [str(dagster), "dev", "-h", host, "-p", str(port), "-w", str(WORKSPACE)]
    return argv, env, home


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    args = p.parse_args(argv)
    command, env, home = dev_command(args.host, args.port)
    os.chdir(home)
    os.execve(command[0], command, env)  # this process becomes `dagster dev`


class DevServer:
    """`dagster dev` over the lake in the background, with its GraphQL API: for the latency bench and
    the UI tests, which look at the lake as the UI does. Bound to 127.0.0.1 on a free port; `stop`
    ends the whole process group it started (webserver, daemon, code server, runs)."""

    def __init__(self, port: int | None = None, log_path: Path | None = None, env: Mapping[str, str] | None = None):
        """`env`: the whole environment of `dagster dev` (default: this process's); its LAKE_* settings
        say which lake."""
        self.port = port or free_port()
        self.log_path = log_path
        self.env = dict(os.environ if env is None else env)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180.0) -> DevServer:
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115 - kept open with the process
        self.process = subprocess.Popen([sys.executable, "-m", "lake_assets.dev", "--port", str(self.port)],
                                        env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True, preexec_fn=_default_signals)
        self.wait_until_ready(timeout)
        return self

    def graphql(self, query: str, variables: dict | None = None, timeout: float = 60.0) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                out = json.loads(response.read())
        except urllib.error.HTTPError as e:  # GraphQL's errors come with a 4xx/5xx status
            raise RuntimeError(f"GraphQL {e.code}: {e.read().decode(errors='replace')[:2000]}") from None
        if out.get("errors"):
            raise RuntimeError(f"GraphQL errors: {out['errors']}")
        return out["data"]

    def wait_until_ready(self, timeout: float) -> None:
        """Until the code location is loaded and every daemon (sensors, schedules, run queue,
        automation) has sent a heartbeat."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"dagster dev exited with {self.process.returncode} (log: {self.log_path})")
            try:
                data = self.graphql(_READY_QUERY, timeout=10)
                entries = data["workspaceOrError"]["locationEntries"]
                loaded = entries and all(e["loadStatus"] == "LOADED" and e["locationOrLoadError"]["__typename"] == "RepositoryLocation"
                                         for e in entries)
                daemons = data["instance"]["daemonHealth"]["allDaemonStatuses"]
                if loaded and daemons and all(d["healthy"] or not d["required"] for d in daemons):
                    return
                last = (entries, daemons)
            except (OSError, RuntimeError, KeyError, TypeError) as e:
                last = e
            time.sleep(0.5)
        raise TimeoutError(f"dagster dev on {self.url} not ready after {timeout:g}s: {last}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGINT)  # dagster dev shuts its services down
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> DevServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_READY_QUERY = """
{
  workspaceOrError { ... on Workspace { locationEntries { name loadStatus
      locationOrLoadError { __typename ... on PythonError { message } } } } }
  instance { daemonHealth { allDaemonStatuses { daemonType healthy required } } }
}
"""


def _default_signals() -> None:
    """A process started in the background inherits SIGINT ignored; dagster dev must get it to stop."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
