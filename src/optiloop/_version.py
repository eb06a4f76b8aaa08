"""The package version, in a module of its own: any module can read it without importing the package's
``__init__`` (no upward import)."""

__version__ = "0.1.0"
