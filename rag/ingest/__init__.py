"""From files and records to passages in the store: reading, chunking and encoding.

loaders.py turns a file's bytes into documents (one loader per format), locations.py finds the page
and heading a passage sits under, chunking.py cuts a document into passages that fit the encoder, and
pipeline.py runs the whole ingest (`rag ingest`, uploads) through a ``Library``. A new file format
goes in loaders.py; a change to where passages end, in chunking.py.
"""
