"""leukodx: leukopenia diagnostic decision support."""
__version__ = "0.1.0"
