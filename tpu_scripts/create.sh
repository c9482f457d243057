#!/usr/bin/env bash
# Creates a Cloud TPU VM (or pod slice) and installs cl_ssl with its training stack (the `train`
# extra; the plain install is the loss library alone) and JAX for TPUs on every worker.
#   tpu_scripts/create.sh NAME ZONE ACCELERATOR [REPO_URL]
#   e.g. tpu_scripts/create.sh cl-ssl-v4 us-central2-b v4-32
set -euo pipefail
name=$1 zone=$2 accelerator=$3 repo=${4:-https://github.com/cl-ssl/cl_ssl.git}
gcloud compute tpus tpu-vm create "$name" --zone="$zone" --accelerator-type="$accelerator" \
  --version=tpu-ubuntu2204-base
gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="
  set -e; git clone $repo cl_ssl || (cd cl_ssl && git pull)
  cd cl_ssl && pip install -U 'jax[tpu]' && pip install -e '.[train]'"
