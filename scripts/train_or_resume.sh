#!/usr/bin/env bash
# Continue the interrupted `t2 train` run of expert NAME, or start one when there is none:
#   bash scripts/train_or_resume.sh NAME --task addition [more t2 train flags]
# Whether to resume is asked of the registry first, so that a resume that fails (a damaged
# checkpoint, say) stops here with its error instead of being retrained from scratch.
set -euo pipefail
name=$1
shift
found=0
python - "$name" <<'PY' || found=$?
import sys

from t2cli.home import open_registry
from t2cli.train.loop import find_resumable_run

with open_registry() as registry:
    sys.exit(0 if find_resumable_run(registry, sys.argv[1]) else 3)
PY
case $found in
  0) t2 train --name "$name" "$@" --resume ;;
  3) t2 train --name "$name" "$@" ;;
  *) echo "error: cannot read the registry to see whether $name has a run to resume" >&2; exit 1 ;;
esac
