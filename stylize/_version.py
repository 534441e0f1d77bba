"""The package version, kept apart so reading it imports nothing heavy."""

__version__ = "0.1.0"
