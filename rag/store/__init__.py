"""The SQLite store: documents, passages, their vectors and keyword index in one ``rag.db`` (database.py).

The store is the source of truth a data directory holds; only ``rag.library.Library`` opens it for
the rest of the code. A change to the schema, to how a write lands (one transaction per source) or to
which passages share a vector (``passage_hash``) goes in database.py.
"""
