"""`latent index`: an embedding dataset -> a FAISS index directory with measured recall.

One module per concern: ``read`` (stream and validate shards), ``choose`` (the auto factory),
``build`` (train, add, the command), ``parallel`` (the add phase on Ray), ``tune`` (search
parameters for a target recall), ``store`` (the index directory, docs/index-directory.md).
"""

import logging
import os

# Idle OpenMP threads sleep instead of spinning: on a machine whose cores are shared (other jobs, Ray
# workers), spinning FAISS threads made builds 3x slower in our measurements. Takes effect only if
# set before the OpenMP runtime loads (FAISS's import); an explicit OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its "could not load AVX512…" chatter at import
