#!/usr/bin/env bash
# vidpar on one machine: one process per GPU via torchrun (standalone rendezvous on a free local port).
#
#   launch/torchrun.sh generate --model tiny --prompt "a red fox in snow" --height 64 --width 64 \
#       --frames 9 --steps 4 --out out.mp4
#   NPROC=8 launch/torchrun.sh generate --model /ckpt/Wan2.1-T2V-14B-Diffusers --prompt "..." --out out.mp4
#   NPROC=4 launch/torchrun.sh check --model tiny --ring 2
#
# Environment: NPROC (default: the GPUs nvidia-smi lists, or 2 without GPUs), VIDPAR_PYTHON (the python of the
# environment vidpar is installed in; default python3), VIDPAR_SHUTDOWN_TIMEOUT (seconds the ranks get to finish
# their step and save after SIGTERM/SIGUSR1 before they are killed; default 300).
# SIGTERM or SIGUSR1 sent to this script's torchrun reaches every rank: with --checkpoint-dir the state is saved
# and the same command resumes.
set -euo pipefail
PYTHON=${VIDPAR_PYTHON:-python3}
if [ -z "${NPROC:-}" ]; then
  NPROC=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  [ "${NPROC:-0}" -gt 0 ] || NPROC=2
fi
exec "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node "$NPROC" \
  --signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 \
  --shutdown-timeout "${VIDPAR_SHUTDOWN_TIMEOUT:-300}" \
  -m vidpar "$@"
