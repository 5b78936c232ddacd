"""`circuitlab explore` on bad input: one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from circuitlab.catalog import open_catalog
from circuitlab.cli import main
from circuitlab.viz import Sources
from circuitlab.viz.app import Explorer
from circuitlab.viz.catalog_page import layout


def explore(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run `circuitlab explore ARGS` in this process through `main`; the tests only call it
    where it must stop before serving."""
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(sys, "argv", ["circuitlab", "explore", *args])
        with pytest.raises(SystemExit) as exit_:
            main()
    return exit_.value.code or 0, capsys.readouterr().err


@pytest.mark.parametrize("url", ["missing.db", "bolt://127.0.0.1:9", "ftp://x"])
def test_unreachable_catalogs(capsys, tmp_path, url):
    code, err = explore(capsys, "--catalog", url if "://" in url else str(tmp_path / url))
    assert code == 2
    assert err.startswith("error: catalog") and "Traceback" not in err


def test_port_in_use_in_a_real_terminal(world):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "circuitlab", "explore", "-c", world.url, "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert out.returncode == 2
    assert out.stderr == (
        f"error: port {port} on 127.0.0.1 is in use: stop what runs there or pick another "
        "with --port\n"
    )


def test_other_host_warns_first(capsys, world):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        code, err = explore(capsys, "-c", world.url, "--host", "0.0.0.0", "--port", port)
    assert code == 2 and "in use" in err
    assert err.startswith("warning: listening on 0.0.0.0")


def test_bad_options(capsys, world, tmp_path):
    code, err = explore(capsys, "-c", world.url, "--runs", str(tmp_path / "none"))
    assert code == 2 and "--runs" in err
    code, err = explore(capsys, "-c", world.url, "--port", "70000")
    assert code == 2 and "--port" in err


def test_empty_catalog_page_says_so(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    open_catalog(url).close()
    page = str(layout(Explorer(Sources(url))))
    assert "holds no circuits" in page and "circuitlab extract" in page
