"""Input/output: linking tables, manifests, AnnData files."""
from .link import link

__all__ = ["link"]
