#!/usr/bin/env bash
# Entry point of the rethink-d2 image (docker/Dockerfile).
#
#   <image> --config configs/scratch_R50_GN_6x.yaml OUTPUT_DIR /output/run1   # train
#   <image> --dry-run --config FILE     # print the train_net command the scheduler env maps to
#   <image> bash                        # any other command runs as is
#
# Arguments starting with "-" go to `python -m rethink_d2.launch`, which reads the scheduler's
# environment (torchrun/Kubernetes MASTER_ADDR/NNODES/NODE_RANK..., Slurm SLURM_*) and execs
# tools/train_net.py with --num-gpus --num-machines --machine-rank --dist-url (docs/cluster.md).
# exec keeps the trainer as the signalled process: SIGTERM/SIGUSR1 -> checkpoint, exit code 75.
set -euo pipefail

PYTHON="${RETHINK_D2_PYTHON:-python}"

# Data loader workers pass batches through /dev/shm; Docker's default is 64 MiB.
shm_kib=$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 {print $2}') || shm_kib=""
if [[ -n "${shm_kib}" && "${shm_kib}" -lt 1048576 ]]; then
    echo "rethink-d2: warning: /dev/shm has only $((shm_kib / 1024)) MiB; data loader workers" \
        "may crash. Use 'docker run --shm-size=16g' (or --ipc=host), or on Kubernetes mount an" \
        "emptyDir with medium: Memory at /dev/shm (docker/README.md)." >&2
fi

if [[ $# -eq 0 || "$1" == -* ]]; then
    exec "${PYTHON}" -m rethink_d2.launch "$@"
fi
exec "$@"
