#!/usr/bin/env bash
# tests/mpi/comm_grads.sh BIN: the MPI fallback for CUDA gradients under the CUDA emulation
# (docs/DISTRIBUTED.md): `HYB_CUDA_EMULATE=1 mpirun -np 2 --oversubscribe BIN mpi`, where BIN is
# tests/cuda_comm_grads: NCCL is refused (the emulation cannot host it), the MPI world is chosen,
# and a device buffer is summed over the 2 ranks through host staging, exactly.
# Skips (77) without mpirun or in a build without MPI (BIN says so).
set -uo pipefail
bin=$1
mpirun=$(command -v mpirun) || { echo "skipped: mpirun not found (scripts/bootstrap.sh)"; exit 77; }
export HYB_CUDA_EMULATE=1 OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0
out=$(timeout 120 "$mpirun" -np 2 --oversubscribe "$bin" mpi 2>&1)
rc=$?
echo "$out"
# a build without MPI: every rank is a single process and skips
if grep -q "^skipped:" <<<"$out" && ! grep -q "rank 1 of 2" <<<"$out"; then exit 77; fi
[[ $rc == 0 ]] || { echo "comm_grads: mpirun exited $rc"; exit 1; }
n=$(grep -c "of 2: gradients through hyb_comm_grads (host staging): 3001 device floats summed on mpi, exact" <<<"$out")
[[ $n == 2 ]] || { echo "comm_grads: expected both ranks to report exact sums, got $n"; exit 1; }
n=$(grep -c "CUDA gradients are reduced through MPI with host staging" <<<"$out")
[[ $n == 2 ]] || { echo "comm_grads: the fallback was logged $n times (once per rank expected)"; exit 1; }
echo "comm_grads: ok"
