"""Catalog errors: every one is a user-facing, one-line message (the CLI prints it as is)."""

from __future__ import annotations


class CatalogError(Exception):
    """A catalog operation failed for a reason the user can act on (bad URL, missing record...)."""


class RecordError(CatalogError, ValueError):
    """A record breaks the schema. `field` is the dotted path of the offending field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class NotFoundError(CatalogError, KeyError):
    """No record with that id (or id prefix) is in the catalog."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "not found"


class SchemaVersionError(CatalogError):
    """Data written by a newer circuitlab: refused rather than misread."""
