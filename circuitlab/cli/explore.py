"""`circuitlab explore`: the Dash explorer over a catalog and run directories."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from circuitlab.cli.common import CatalogOption, CliError, console, err_console, visible

LOCAL = ("127.0.0.1", "localhost", "::1")


def register(app: typer.Typer) -> None:
    @app.command("explore")
    def explore_cmd(
        catalog: CatalogOption = None,
        runs: Path = typer.Option(
            None, "--runs", help="Directory of training runs for the training view (e.g. runs/)."
        ),
        port: int = typer.Option(8050, "--port", help="Port to listen on."),
        host: str = typer.Option(
            "127.0.0.1",
            "--host",
            help="Interface to listen on. Anything but 127.0.0.1 lets other machines in: the "
            "explorer has no login and can edit labels in the catalog.",
        ),
    ) -> None:
        """Browse the catalog, attribution graphs, features and training curves in a web
        page (Dash; every asset served locally, works offline)."""
        try:
            from circuitlab.viz import PortInUseError, Sources, create_app, make_server
        except ImportError as exc:
            raise CliError(
                f"the explorer needs the viz extra ({exc.name} is missing): "
                "pip install 'circuitlab[viz]'"
            ) from None
        from rich.markup import escape

        from circuitlab.catalog import default_url
        from circuitlab.viz import ExplorerError

        if not 0 <= port <= 65535:
            raise CliError(f"--port must be in 0..65535, got {port}")
        if runs is not None and not runs.is_dir():
            raise CliError(f"--runs {runs}: no such directory")
        sources = Sources(catalog or default_url(), runs_dir=runs)
        try:
            holds = sources.describe()
        except ExplorerError as exc:
            raise CliError(visible(str(exc))) from None
        if host not in LOCAL:
            err_console.print(
                f"[bold yellow]warning:[/] listening on {escape(visible(host))}: anyone who can "
                "reach this machine can read the catalog and edit its labels (no login)."
            )
        try:
            server = make_server(create_app(sources), host, port)
        except PortInUseError as exc:
            raise CliError(str(exc)) from None
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
        shown = f"[{host}]" if ":" in host else host
        console.print(f"catalog {visible(sources.catalog_url)}: {holds}", highlight=False)
        console.print(
            f"explorer at http://{shown}:{server.port}/ (Ctrl-C stops it)", highlight=False
        )
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            console.print("stopped")
        finally:
            server.server_close()
