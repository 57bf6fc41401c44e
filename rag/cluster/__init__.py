"""The library sharded over a Ray cluster (``--cluster``): shards.py says what a shard is and where a
document goes (the manifest, global ids), actors.py holds the Ray actors (a shard's Library, an
encoder), and library.py the ``ClusterLibrary`` that fans each call out to the shards and merges.

Only the CLI's and the web app's ``--cluster``/CLUSTER paths import this package, and so Ray; nothing
in the rest of ``rag`` imports it (a cluster library is handed in and used through its methods).
"""
