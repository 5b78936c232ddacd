"""circuitlab: grok small algorithmic transformers, extract their circuits, catalog, compose."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `circuitlab.Library` without importing torch for every `import circuitlab` (the CLI)
    if name == "Library":
        from circuitlab.compose import Library

        return Library
    raise AttributeError(f"module 'circuitlab' has no attribute {name!r}")
