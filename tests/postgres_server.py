"""A throwaway PostgreSQL server on 127.0.0.1 for tests, started from the Debian packages."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from contextlib import contextmanager

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def postgres_server(password: str | None = None):
    """A server on 127.0.0.1; with `password`, TCP logins of user `lake` need it (scram-sha-256)
    and the DSN yielded carries it."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not bins:
        msg = "no PostgreSQL server: scripts/install_system_deps.sh installs the 'postgresql' package"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    pg = bins[-1]
    root = tempfile.mkdtemp(prefix="lake-pg-")
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        shutil.chown(root, "postgres", "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    data, port = f"{root}/data", _free_port()
    try:
        auth = ["-A", "trust"]
        if password is not None:
            pwfile = f"{root}/pwfile"
            with open(os.open(pwfile, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
                f.write(password + "\n")
            if as_postgres:
                shutil.chown(pwfile, "postgres", "postgres")
            auth = ["--auth-host=scram-sha-256", "--auth-local=trust", f"--pwfile={pwfile}"]
        subprocess.run(as_postgres + [f"{pg}/initdb", "-D", data, *auth, "-U", "lake", "--no-sync"],
                       check=True, capture_output=True)
        if password is not None:
            os.remove(pwfile)
        subprocess.run(as_postgres + [f"{pg}/pg_ctl", "-D", data, "-l", f"{root}/server.log", "-w", "-t", "60",
                                      "-o", f"-h 127.0.0.1 -p {port} -k {root} -F", "start"], check=True, capture_output=True)
        yield f"host=127.0.0.1 port={port} user=lake dbname=postgres" + (f" password={password}" if password is not None else "")
    finally:
        subprocess.run(as_postgres + [f"{pg}/pg_ctl", "-D", data, "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def fresh_database(server_dsn: str) -> str:
    import psycopg2

    name = f"ledger_{uuid.uuid4().hex[:10]}"
    conn = psycopg2.connect(server_dsn)
    conn.autocommit = True
    conn.cursor().execute(f"CREATE DATABASE {name}")
    conn.close()
    return server_dsn.replace("dbname=postgres", f"dbname={name}")
