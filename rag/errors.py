"""One exception type for the rag layer: its message is shown to the user as is (CLI and web)."""


class RagError(Exception):
    """Something the user can fix: a bad input, a missing file or model, an empty store."""
