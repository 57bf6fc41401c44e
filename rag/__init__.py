"""Retrieval-augmented question answering over a user's own documents."""
