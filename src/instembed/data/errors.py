"""Errors of the data stage."""


class ImageReadError(ValueError):
    """A file could not be read or decoded (missing, unreadable, truncated, wrong content)."""
