"""`latent index`: an embedding dataset -> a FAISS index directory with measured recall.

One sub-package per stage: ``input`` (scan and stream the embedding dataset), ``plan`` (the
factory and shard count), ``builder`` (train, add, tune, the command), ``store`` (the index directory,
docs/index-directory.md: writing, opening, sharded and on-disk files, verify).
"""
