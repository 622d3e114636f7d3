#!/bin/bash
# Embed one corpus with several models (Hydra multirun over the model presets in conf/model/): one
# embedding dataset per model, OUT/<model name>, each with its run record (_latent/runs/*/).
#
# usage: jobs/sweeps/embed-models.sh CORPUS OUT [key=value ...]
#        MODELS=vit-b-32 jobs/sweeps/embed-models.sh CORPUS OUT model.pretrained=null
# On a cluster, add ray.address=auto (or submit this script's command with jobs/ray/submit.py).
set -euo pipefail
corpus=${1:?usage: $0 CORPUS OUT [key=value ...]}
out=${2:?usage: $0 CORPUS OUT [key=value ...]}
shift 2
models=${MODELS:-vit-b-32,vit-l-14}
latent embed --multirun "input.path=$corpus" "model=$models" \
  "output.path=$out/\${model.name}" "hydra.sweep.dir=$out/.multirun" "$@"
