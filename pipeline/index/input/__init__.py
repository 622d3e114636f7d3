"""Reading `latent index`'s input: scan an embedding dataset (Parquet, .npy, clip-retrieval) and stream its vectors."""
