"""Planning an index before any vector is added: the FAISS factory, its memory, the shard layout."""
