#!/usr/bin/env bash
# Starts the same run on every worker of a TPU VM; the processes join through
# jax.distributed.initialize() (--multihost). The workdir and the data dir are bucket folders
# (gs://BUCKET/...) that every worker reads and writes directly (or folders every worker sees: a
# gcsfuse mount or NFS); process 0 writes the results files, every process its part of the
# checkpoints. Each worker logs to ~/cl_ssl/run.log. Run again after a preemption, the same
# command resumes the run from its workdir.
#   tpu_scripts/launch.sh NAME ZONE CONFIG WORKDIR [DATA_DIR] [--config.FIELD=VALUE ...]
#   e.g. tpu_scripts/launch.sh cl-ssl-v4 us-central2-b configs/imagenet100.py:cassle \
#          gs://my-bucket/runs/in100 gs://my-bucket/tensorflow_datasets
# Without DATA_DIR the config's data dir is used (tfds's default, ~/tensorflow_datasets, on each
# worker, unless the config or a --config.dataset.data_dir=... flag names one).
set -euo pipefail
name=$1 zone=$2 config=$3 workdir=$4; shift 4
data_dir_flag=""
if [ $# -gt 0 ] && [[ "$1" != -* ]]; then
  data_dir_flag="--config.dataset.data_dir=$1"
  shift
fi
gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="
  cd cl_ssl && nohup python -m cl_ssl.main --multihost --config=$config --workdir=$workdir \
    $data_dir_flag $* > run.log 2>&1 &"
