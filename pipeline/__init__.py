"""latent: batch CLIP embedding on Ray Data and FAISS vector search."""

__version__ = "0.1.0"
