"""salsa_lib: the package behind the SALSA companion notebooks (one subpackage per layer: core, data, search, stages)."""

__version__ = "0.1.0"
