#!/usr/bin/env bash
# A scopeloop worker on a cluster GPU node: takes refresh jobs from the lab's Redis (quick
# refreshes, and from the GPU queue deep refreshes and embedding chunks), trains on the GPU,
# publishes models into the shared SCOPELOOP_HOME. See docs/hpc.md.
#
#   sbatch scripts/slurm_worker.sh                 # from the repository folder: a long-lived worker
#   sbatch scripts/slurm_worker.sh --burst         # do what is queued, then exit (frees the GPU)
#   sbatch --gres=none scripts/slurm_worker.sh --queues quick,gpu   # a CPU node helping with
#                                                  # embedding chunks (and deep refreshes, slowly)
#   sbatch --partition=gpu-long --time=3-00:00:00 scripts/slurm_worker.sh   # override any #SBATCH line
#
# Settings come from an env file (not from this script: it holds the Redis password and the
# Label Studio token): $SCOPELOOP_ENV_FILE, default ~/.config/scopeloop/worker.env, e.g.
#   REDIS_URL=redis://:<REDIS_PASSWORD>@labserver.example.org:6379/0
#   LABEL_STUDIO_URL=http://labserver.example.org:8080
#   LABEL_STUDIO_API_KEY=<LABEL_STUDIO_TOKEN>
#   SCOPELOOP_HOME=/groups/mylab/scopeloop/work      # the SAME path as on the lab server
#   SCOPELOOP_TUNNEL=me@labserver.example.org         # optional: reach both through ssh (docs/hpc.md)
#
#SBATCH --job-name=scopeloop-worker
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:TERM@300
#SBATCH --output=scopeloop-worker-%j.log
# (--signal: SIGTERM to this script 5 min before the time limit, so it can requeue itself)
set -uo pipefail

# ---- software: the repository's .venv (bash scripts/setup.sh on a GPU node installs CUDA
# torch + faiss-gpu), or set SCOPELOOP_VENV / SCOPELOOP_CONDA_ENV. Module hints, if your
# cluster needs them before Python or CUDA work:
# module load python/3.11
# module load cuda/12.4
REPO=${SCOPELOOP_REPO:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "$0")/.." && pwd)}}
ENV_FILE=${SCOPELOOP_ENV_FILE:-$HOME/.config/scopeloop/worker.env}
if [ -f "$ENV_FILE" ]; then set -a; . "$ENV_FILE"; set +a; fi
if [ -n "${SCOPELOOP_CONDA_ENV:-}" ]; then
  eval "$(conda shell.bash hook)" && conda activate "$SCOPELOOP_CONDA_ENV"
else
  . "${SCOPELOOP_VENV:-$REPO/.venv}/bin/activate" || { echo "no virtual environment: run 'bash scripts/setup.sh' in $REPO (on a GPU node) or set SCOPELOOP_VENV" >&2; exit 1; }
fi
command -v scopeloop >/dev/null || { echo "scopeloop is not installed in this environment" >&2; exit 1; }
: "${REDIS_URL:?set REDIS_URL (the lab Redis) in $ENV_FILE}"
: "${SCOPELOOP_HOME:?set SCOPELOOP_HOME (the shared work directory, same path as on the lab server) in $ENV_FILE}"
export SCOPELOOP_LOADER_WORKERS=${SCOPELOOP_LOADER_WORKERS:-$(( ${SLURM_CPUS_PER_TASK:-2} - 1 ))}

# ---- optional ssh tunnel: compute nodes that cannot reach the lab server directly
if [ -n "${SCOPELOOP_TUNNEL:-}" ]; then
  ssh -o ExitOnForwardFailure=yes -o ServerAliveInterval=30 -N \
      -L 16379:127.0.0.1:"${SCOPELOOP_TUNNEL_REDIS_PORT:-6379}" \
      -L 18080:127.0.0.1:"${SCOPELOOP_TUNNEL_LS_PORT:-8080}" "$SCOPELOOP_TUNNEL" &
  tunnel_pid=$!
  sleep 3
  kill -0 "$tunnel_pid" 2>/dev/null || { echo "ssh tunnel to $SCOPELOOP_TUNNEL failed" >&2; exit 1; }
  export REDIS_URL=$(python -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(p._replace(netloc=(p.netloc.rpartition("@")[0] + "@" if "@" in p.netloc else "") + "127.0.0.1:16379").geturl())' "$REDIS_URL")
  export LABEL_STUDIO_URL=http://127.0.0.1:18080
fi

echo "scopeloop worker on $(hostname), job ${SLURM_JOB_ID:-none}, GPU: $(nvidia-smi -L 2>/dev/null | head -1 || echo none)"
python -c 'import torch; print("torch", torch.__version__, "CUDA available:", torch.cuda.is_available())'

# ---- the worker. The lab server's worker runs the scheduler (nightly, recovery); this one
# only takes jobs. Extra arguments go to `scopeloop worker` (e.g. --burst, --queues). Which
# queues: with a GPU visible, quick + gpu + low; without one (no --gres gpu), quick + low
# only, unless --queues (or SCOPELOOP_WORKER_QUEUES in the env file) says otherwise.
scopeloop worker --no-scheduler "$@" &
worker_pid=$!
requeue() {
  # time limit or preemption: stop taking jobs and come back later. A job cut short is not
  # lost: its lock expires and the lab server's scheduler queues the refresh again.
  echo "$(date) SIGTERM: stopping the worker and requeueing job ${SLURM_JOB_ID:-}"
  kill -TERM "$worker_pid" 2>/dev/null  # warm shutdown: no new jobs
  for _ in $(seq 20); do kill -0 "$worker_pid" 2>/dev/null || break; sleep 1; done
  kill -TERM "$worker_pid" 2>/dev/null  # still training after 20 s: cold shutdown
  [ -n "${SLURM_JOB_ID:-}" ] && scontrol requeue "$SLURM_JOB_ID"
}
trap requeue TERM USR1
wait "$worker_pid"; status=$?
wait "$worker_pid" 2>/dev/null  # after the trap: wait for the worker to finish stopping
[ -n "${tunnel_pid:-}" ] && kill "$tunnel_pid" 2>/dev/null
exit $status
