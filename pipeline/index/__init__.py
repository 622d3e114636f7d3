"""`latent index`: an embedding dataset -> a FAISS index directory with measured recall.

One module per concern: ``read`` (stream and validate shards), ``choose`` (the auto factory),
``build`` (train, add, the command), ``parallel`` (the add phase on Ray), ``tune`` (search
parameters for a target recall), ``store`` (the index directory, docs/index-directory.md).
"""
