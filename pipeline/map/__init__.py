"""The latent map (docs/map.md), in the order `latent map` runs it:

- build.py: ``run_map``, the command from start to end (create, append, resume, publish);
- source.py: the rows to map (an embedding dataset or an index), read in units;
- landmarks.py: the landmark stage: a seeded sample laid out, its regions and labels, staged for resume;
  - layout.py: 2-D layouts (FAISS kNN graph, UMAP, PCA) and the placement rules of a row from its
    nearest landmarks (``LandmarkIndex``);
  - arrange.py: the global arrangement: pieces of a disconnected kNN graph put where their centroids say;
  - regions.py: the regions' hierarchy, from the fine grain up;
  - labels.py: region names (text keywords or zero-shot);
- place.py: placement of every row, a job of the shared runner;
- quality.py: neighbourhood preservation and regions' nearest regions kept, into map.json;
- render.py: map.png; store.py: the map directory's files (map.json, points, clusters, landmarks).
"""
