#!/usr/bin/env bash
# Starts the same run on every worker of a TPU VM; the processes join through
# jax.distributed.initialize() (--multihost). The workdir must be a folder that every worker
# sees (a gcsfuse-mounted bucket or NFS), so that checkpoints are shared; process 0 writes the
# results files.
#   tpu_scripts/launch.sh NAME ZONE CONFIG WORKDIR [--config.FIELD=VALUE ...]
set -euo pipefail
name=$1 zone=$2 config=$3 workdir=$4; shift 4
gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="
  cd cl_ssl && nohup python -m cl_ssl.main --multihost --config=$config --workdir=$workdir $* \
    > run.log 2>&1 &"
