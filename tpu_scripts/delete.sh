#!/usr/bin/env bash
# Deletes a TPU VM created by create.sh.
#   tpu_scripts/delete.sh NAME ZONE
set -euo pipefail
gcloud compute tpus tpu-vm delete "$1" --zone="$2" --quiet
