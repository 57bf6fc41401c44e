"""The library sharded over a Ray cluster (``--cluster``): library.py holds the manifest, the Ray actors
(a shard's Library, an encoder) and the ``ClusterLibrary`` that fans each call out to the shards and
merges their results.

Only a ``--cluster`` command or the web app's CLUSTER imports this package, and so Ray.
"""
