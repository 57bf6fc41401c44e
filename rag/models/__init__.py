"""The models: the encoder (encoders.py), the generators (generators.py), the trained span reader
(span_reader.py, its shipped weights in span-reader/) and the question-side adapter for dense search
(query_adapter.py).

Each module loads and runs one kind of model and knows where its files live; what to do with their
outputs belongs to rag.search and rag.answer, and training them to rag.tune. A new generator engine
is one entry in generators.py's GENERATORS; a new encoder back end starts at encoders.py's
ENCODER_BACKENDS.
"""
