"""Building an index: train, add (in process, on Ray, or per shard), append, tune the search parameters, summarize."""
