"""circuitlab: grok small algorithmic transformers, extract their circuits, catalog and compose them."""

__version__ = "0.1.0"
