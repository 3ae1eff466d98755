#!/usr/bin/env bash
# Nightly deep refresh (backbone fine-tune) of one project, for labs that prefer cron (or a
# SLURM cron) over the scheduler built into `scopeloop worker`. See scripts/nightly_refresh.cron.
#
#   scripts/nightly_refresh.sh PROJECT            # queue it: any running worker (GPU first) takes it
#   scripts/nightly_refresh.sh PROJECT --sbatch   # queue it and submit a burst GPU worker that runs it and exits
#   scripts/nightly_refresh.sh PROJECT --now      # run it here, in this process (on a GPU node)
#
# Settings (REDIS_URL, LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY, SCOPELOOP_HOME) from
# $SCOPELOOP_ENV_FILE (default ~/.config/scopeloop/worker.env), like scripts/slurm_worker.sh.
set -euo pipefail
project=${1:?usage: nightly_refresh.sh PROJECT [--sbatch|--now]}
mode=${2:-}
REPO=${SCOPELOOP_REPO:-$(cd "$(dirname "$0")/.." && pwd)}
ENV_FILE=${SCOPELOOP_ENV_FILE:-$HOME/.config/scopeloop/worker.env}
if [ -f "$ENV_FILE" ]; then set -a; . "$ENV_FILE"; set +a; fi
. "${SCOPELOOP_VENV:-$REPO/.venv}/bin/activate"
echo "$(date '+%F %T') nightly deep refresh of '$project' ${mode:-(queued)}"
case "$mode" in
  "")       scopeloop refresh --deep --project "$project" ;;
  --now)    scopeloop refresh --deep --now --project "$project" ;;
  --sbatch) scopeloop refresh --deep --project "$project"
            cd "$REPO" && sbatch --job-name="scopeloop-nightly-$project" scripts/slurm_worker.sh --burst ;;
  *)        echo "unknown option '$mode': use --sbatch or --now" >&2; exit 2 ;;
esac
