"""Answering a question from retrieved passages: pipeline.py (``ask``: retrieve, read, cite), the
readers it can use (readers.py: span, prompt, fid, extract), the evidence sentences and answer types
they share (evidence.py, spans.py) and copy-constrained decoding (copying.py).

A new reader is one entry in readers.py's registry; the reader's model itself lives in rag.models.
"""
