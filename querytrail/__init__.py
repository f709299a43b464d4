"""querytrail: the thin shell holding the CLI and settings."""

__version__ = "0.1.0"
