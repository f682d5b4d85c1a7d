#!/usr/bin/env bash
# Rebuild the starter bank shipped in t2cli/bank/ for the embedded model (SmolLM2-135M-Instruct, CPU):
# three SVF experts in three categories, their held-out lifts, and the learned router over them.
#
#   bash scripts/bank.sh            # ~1 hour on 2 CPU cores; re-runs skip what is already done
#
# Work happens in its own registry ($T2_BANK_HOME, default ./.t2-bank) so that a user's registry is
# never touched; the last step writes the files into t2cli/bank/ (python -m t2cli.bank.build).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export T2_HOME="${T2_BANK_HOME:-$PWD/.t2-bank}"
evals="$T2_HOME/bank-evals"
mkdir -p "$evals"
set -x

t2 decompose

# Score once: a finished evaluation file is kept; a half-written one never takes its place.
eval_once() {
  local out=$1
  shift
  [ -s "$out" ] && return 0
  t2 eval "$@" --json >"$out.tmp"
  mv -f "$out.tmp" "$out"
}

# name | task | training flags | test items scored | answer budget of the evaluation
# Code and reasoning are generated free-form tasks the 135M model half-knows (python-types, possession):
# on the multiple-choice sets (coding, logic, arc-easy) the same recipe stayed within noise of chance,
# and what it taught was the answer format, which every expert then shared; see docs/router.md.
experts=(
  "bank-addition|addition|--steps 40|200|16"
  "bank-types|python-types|--steps 40 --eval-every 8|300|16"
  "bank-possession|possession|--steps 40 --eval-every 8|300|16"
)
for entry in "${experts[@]}"; do
  IFS='|' read -r name task flags limit budget <<<"$entry"
  read -r -a flag_words <<<"$flags"
  if ! t2 experts show "$name" >/dev/null 2>&1; then
    bash scripts/train_or_resume.sh "$name" --task "$task" "${flag_words[@]}"
  fi
  # Paired held-out evaluations (the same test items, greedy): the lifts the bank's README reports.
  eval_once "$evals/$task-base.json" --task "$task" --base --limit "$limit" --max-new-tokens "$budget"
  eval_once "$evals/$task-$name.json" --task "$task" --expert "$name" --limit "$limit" --max-new-tokens "$budget"
done

# The held-out variants of bench/t2_table.py stay out of the router's prompts (their few-shot items included).
held_out=addition-3digit,python-types-expr,possession-long
if ! t2 router show bank-router >/dev/null 2>&1; then
  t2 router train --experts bank-addition,bank-types,bank-possession --name bank-router --exclude-tasks "$held_out"
fi

python -m t2cli.bank.build --evals "$evals" --experts bank-addition,bank-types,bank-possession --command "bash scripts/bank.sh"
