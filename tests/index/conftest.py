import faiss

# One OpenMP thread in the index tests: their FAISS calls are tiny, and two spinning threads on a
# shared 2-core machine make them ~10x slower (OpenMP barriers under oversubscription).
faiss.omp_set_num_threads(1)
