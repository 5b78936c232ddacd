"""circuitlab: grok small algorithmic transformers, extract their circuits, catalog, compose."""

__version__ = "0.1.0"
