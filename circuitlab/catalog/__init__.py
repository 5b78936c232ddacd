"""The circuit catalog: typed records and one `Catalog` API over SQLite (default) or Neo4j.

    from circuitlab.catalog import open_catalog, Task
    with open_catalog() as cat:                    # ~/.circuitlab/catalog.db or $CIRCUITLAB_CATALOG
        cat.put(Task(spec="add_mod_113"))
        hits = cat.search(task="add_mod_113", minimum={"sufficiency": 0.9})

The catalog knows storage, not torch: records hold JSON data only.
"""

from circuitlab.catalog.catalog import (
    DEFAULT_PATH,
    ENV_VAR,
    Catalog,
    CircuitGraph,
    Compatibility,
    Lineage,
    Stats,
    Summary,
    default_url,
    open_catalog,
    tokenize,
)
from circuitlab.catalog.errors import CatalogError, NotFoundError, RecordError, SchemaVersionError
from circuitlab.catalog.records import (
    ABLATIONS,
    DERIVATIONS,
    NODE_TYPES,
    PRIORS,
    SCHEMA_VERSION,
    Boundary,
    Circuit,
    Edge,
    Example,
    Feature,
    Function,
    Implements,
    Interface,
    Interpretation,
    Metadata,
    Metrics,
    Model,
    Node,
    Output,
    Port,
    Program,
    Record,
    Slot,
    Tags,
    Task,
    record_from_dict,
)
from circuitlab.catalog.transfer import export_catalog, import_catalog

__all__ = [
    "ABLATIONS",
    "DEFAULT_PATH",
    "DERIVATIONS",
    "ENV_VAR",
    "NODE_TYPES",
    "PRIORS",
    "SCHEMA_VERSION",
    "Boundary",
    "Catalog",
    "CatalogError",
    "Circuit",
    "CircuitGraph",
    "Compatibility",
    "Edge",
    "Example",
    "Feature",
    "Function",
    "Implements",
    "Interface",
    "Interpretation",
    "Lineage",
    "Metadata",
    "Metrics",
    "Model",
    "Node",
    "NotFoundError",
    "Output",
    "Port",
    "Program",
    "Record",
    "RecordError",
    "SchemaVersionError",
    "Slot",
    "Stats",
    "Summary",
    "Tags",
    "Task",
    "default_url",
    "export_catalog",
    "import_catalog",
    "open_catalog",
    "record_from_dict",
    "tokenize",
]
