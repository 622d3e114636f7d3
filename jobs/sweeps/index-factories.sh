#!/bin/bash
# Sweep FAISS index factories over one embedding dataset (Hydra multirun): one index directory per
# factory, OUT/0, OUT/1, ..., each with its run record (runs/*/config.yaml: the factory and every
# other key; summary.json: recall, QPS, memory, build time). Compare them with
#   jq -r '[.factory, .recall.value, .qps, .memory_bytes] | @tsv' OUT/*/runs/*/summary.json
#
# usage: jobs/sweeps/index-factories.sh EMBEDDINGS OUT [key=value ...]
#        FACTORIES='"IVF4096,PQ64x4fs,RFlat",HNSW32' jobs/sweeps/index-factories.sh ...
# On a cluster, add ray.address=auto: each run's parallel add uses every node.
set -euo pipefail
embeddings=${1:?usage: $0 EMBEDDINGS OUT [key=value ...]}
out=${2:?usage: $0 EMBEDDINGS OUT [key=value ...]}
shift 2
# quoted factories: their commas are not sweep separators
factories=${FACTORIES:-'"IVF1024,Flat","IVF1024,PQ32x4fs,RFlat",HNSW32'}
latent index --multirun "input.path=$embeddings" "index.factory=$factories" \
  "index.path=$out/\${hydra:job.num}" "hydra.sweep.dir=$out/.multirun" "$@"
