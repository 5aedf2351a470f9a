"""The leukodx command line: ``leukodx assess | replay | rules | schema | serve | feedback``."""
from .main import main

__all__ = ["main"]
