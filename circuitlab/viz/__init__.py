"""The circuit explorer: a Dash app over the catalog and run directories (`circuitlab explore`).

    from circuitlab.viz import Sources, create_app, make_server
    app = create_app(Sources("sqlite:///runs/catalog.db", runs_dir=Path("runs")))
    make_server(app, "127.0.0.1", 8050).serve_forever()

Pages: the catalog browser and lineage, the graph view of a circuit or of one input with its
feature panel, and training curves. Read-only on the catalog except for feature labels. Needs
the `viz` extra (dash).
"""

from circuitlab.viz.app import Explorer, PortInUseError, create_app, make_server
from circuitlab.viz.sources import ExplorerError, Sources

__all__ = ["Explorer", "ExplorerError", "PortInUseError", "Sources", "create_app", "make_server"]
