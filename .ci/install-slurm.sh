#!/usr/bin/env bash
# Install a single-machine Slurm for tests/test_slurm.py (Debian/Ubuntu: slurm-wlm daemons, client, munge).
# tests/test_slurm.py starts the daemons itself (tests/slurm/local-slurm.sh: 2 fake nodes with fake GPUs).
# Exit 0 when Slurm is (now) installed; non-zero when it cannot be (no root/sudo, no apt-get).
set -euo pipefail
if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
   && command -v munged >/dev/null; then
  echo "install-slurm: already installed ($(sbatch --version))"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null && sudo -n true 2>/dev/null || { echo "install-slurm: needs root or passwordless sudo" >&2; exit 1; }
  SUDO="sudo -n"
fi
command -v apt-get >/dev/null || { echo "install-slurm: needs apt-get (Debian/Ubuntu)" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
echo "install-slurm: installed ($(sbatch --version))"
