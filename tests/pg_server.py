"""A throw-away PostgreSQL server for tests: a temp data dir, a free port on 127.0.0.1, trust auth on loopback only,
stopped and removed at exit.

    python tests/pg_server.py COMMAND...   # runs COMMAND with SWEEPS_TEST_POSTGRES_URL set (what .ci/run does)

tests/test_postgres.py uses that URL when set, else starts a server itself through `postgres_server()`. As root
(CI), the server runs as the `postgres` user: initdb refuses root.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ENV = "SWEEPS_TEST_POSTGRES_URL"
DATABASE = "sweeps"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL binaries (or no user to run them as); tests skip with this message."""


def find_bindir() -> Path | None:
    """PG_BINDIR, else the folder of `pg_ctl` on PATH, else the newest /usr/lib/postgresql/<version>/bin."""
    if os.environ.get("PG_BINDIR"):
        return Path(os.environ["PG_BINDIR"])
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).resolve().parent
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                   key=lambda p: [int(x) for x in re.findall(r"\d+", p.parent.parent.name)] or [0])  # fmt: skip
    return found[-1].parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Yields a SQLAlchemy URL of an empty database on a fresh server; the server and its files are gone after."""
    bindir = find_bindir()
    if bindir is None or not (bindir / "initdb").exists():
        raise PostgresUnavailable("no PostgreSQL binaries (initdb, pg_ctl): install postgresql or set PG_BINDIR")
    root = Path(tempfile.mkdtemp(prefix="sweeps-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            raise PostgresUnavailable("running as root needs a 'postgres' user to run the server as") from None
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data = root / "data"
    started = False
    try:
        _run("initdb", [*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                        "-E", "UTF8", "--locale=C", "--no-sync"])  # fmt: skip
        # only loopback: the unix socket lives in the private temp dir, TCP listens on 127.0.0.1 alone
        (data / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
        for attempt in range(3):  # a free port can be taken between probing and binding
            port = _free_port()
            opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=200"
            proc = subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"),
                                   "-w", "-t", "60", "-o", opts, "start"], capture_output=True, text=True)  # fmt: skip
            if proc.returncode == 0:
                started = True
                break
            if attempt == 2:
                log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
                raise RuntimeError(f"pg_ctl start failed: {proc.stdout}{proc.stderr}{log[-2000:]}")
        _run("createdb", [*as_user, str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                          DATABASE])  # fmt: skip
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/{DATABASE}"
    finally:
        if started:
            subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


def _run(name: str, cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{name} failed: {proc.stderr.strip()}")


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python tests/pg_server.py COMMAND...", file=sys.stderr)
        return 2
    # SIGTERM (a CI timeout) must still stop the server and remove its files
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with postgres_server() as url:
        print(f"PostgreSQL for tests: {url}", file=sys.stderr, flush=True)
        return subprocess.run(argv, env={**os.environ, ENV: url}).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
