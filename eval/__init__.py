"""Measurement: ANN recall and speed, ingestion throughput, retrieval quality, answers, load."""
