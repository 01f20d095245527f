"""The clrk.apoxy.dev/v1alpha1 resources: models, loader, validation, resolution."""

from clrk.api.findings import Finding, Scope, Severity
from clrk.api.loader import LoadResult, load_documents, load_objects, load_paths, load_text
from clrk.api.resolve import Resolution, resolve
from clrk.api.resources import API_VERSION, Resource

__all__ = [
    "API_VERSION",
    "Finding",
    "LoadResult",
    "Resolution",
    "Resource",
    "Scope",
    "Severity",
    "load_documents",
    "load_objects",
    "load_paths",
    "load_text",
    "resolve",
]
