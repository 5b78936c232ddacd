"""A local Bolt + Cypher server for tests and benchmarks: ArcadeDB with its Bolt plugin.

No Neo4j server can be installed from the package registries this project uses; the
`arcadedb-embedded` wheel bundles ArcadeDB and its own JRE, and the official neo4j driver talks to
its Bolt plugin. `LocalBoltServer` runs it in a child process on a free loopback port; the child
exits when our end of its stdin closes, so a crashed test run leaves no server behind.

    with LocalBoltServer(tmp_dir) as server:   # ~3-5 s to start
        os.environ.update(server.env())        # root and this start's random password
        cat = open_catalog(server.url)         # bolt://127.0.0.1:PORT/catalog

ArcadeDB is not Neo4j: the Neo4j backend keeps to the Cypher subset both run (see NOTES.md).
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path
from types import TracebackType

from circuitlab.catalog.errors import CatalogError

ROOT_USER = "root"
DATABASE = "catalog"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalBoltServer:
    """ArcadeDB with Bolt on 127.0.0.1, data under `root`, in a child process."""

    def __init__(self, root: str | os.PathLike[str], heap: str = "2g", timeout: float = 120.0):
        self.root = Path(root)
        self.heap = heap
        self.timeout = timeout
        self.port = 0
        self.password = ""
        self._proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"bolt://127.0.0.1:{self.port}/{DATABASE}"

    def env(self) -> dict[str, str]:
        """Environment variables that give the Neo4j backend this server's credentials."""
        return {"NEO4J_USER": ROOT_USER, "NEO4J_PASSWORD": self.password}

    def start(self) -> LocalBoltServer:
        """Start the server with a new random root password (any local user can reach a
        loopback port, so a fixed one would let them in); `env()` hands it to clients."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.password = secrets.token_urlsafe(32)
        log = open(self.root / "server.log", "w")  # noqa: SIM115 - handed to the child
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "circuitlab.catalog.arcadedb",
                str(self.root / "databases"),
                str(self.port),
                str(_free_port()),
                self.heap,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=self.root,  # ArcadeDB writes ./log relative to its working directory
        )
        log.close()
        # On stdin, not argv: other users can read a command line. (A child that died at once
        # has closed the pipe; its log explains below.)
        with suppress(BrokenPipeError):
            if self._proc.stdin:
                self._proc.stdin.write(self.password + "\n")
                self._proc.stdin.flush()
        deadline = time.monotonic() + self.timeout
        line = self._proc.stdout.readline() if self._proc.stdout else ""
        if line.strip() != "READY":
            self.stop()
            tail = (self.root / "server.log").read_text(errors="replace")[-2000:]
            raise CatalogError(
                f"ArcadeDB did not start: {line.strip() or 'no output'}; log: {tail}"
            )
        while time.monotonic() < deadline:  # the listener may trail the READY line briefly
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        self.stop()
        raise CatalogError(f"ArcadeDB Bolt port {self.port} did not open within {self.timeout}s")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin:
            proc.stdin.close()  # the child stops the server and exits
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()

    def __enter__(self) -> LocalBoltServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _serve(root: str, bolt_port: int, http_port: int, heap: str) -> None:
    """Child process: read the root password from stdin, start ArcadeDB with Bolt on loopback,
    create the database, say READY, and run until stdin closes."""
    from arcadedb_embedded.server import ArcadeDBServer

    password = sys.stdin.readline().strip()
    # ArcadeDB sets the root password only when it creates its users file: a restart in the
    # same directory would keep the last start's password.
    (Path(root) / "config" / "server-users.jsonl").unlink(missing_ok=True)
    server = ArcadeDBServer(
        root_path=root,
        root_password=password,
        config={
            "host": "127.0.0.1",
            "http_port": http_port,
            "server_plugins": "Bolt:com.arcadedb.bolt.BoltProtocolPlugin",
            "bolt_port": bolt_port,
        },
        jvm_kwargs={"heap_size": heap},
    )
    server.start()
    try:
        server.create_database(DATABASE)
        print("READY", flush=True)
        sys.stdin.read()
    finally:
        server.stop()


if __name__ == "__main__":
    _serve(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
