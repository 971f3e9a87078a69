#!/usr/bin/env bash
# Evaluates the checkpoints of a running (or finished) experiment of experiments/Makefile that are not
# evaluated yet: `make eval` under the experiment's lock. Made for cron (see crontab.example).
#
#   experiments/eval-new-checkpoints.sh OUT [VAR=VALUE...]
#
# OUT is the experiment's folder; VAR=VALUE are the variables the experiment's make was given (DATA,
# METHODS, KNN_FLAGS, ...), so that the same files are made the same way.
# - Only complete checkpoints: make lists a checkpoint once its .json sidecar is there, which pretrain
#   writes after the tensors (and a half-written file has a temporary name).
# - Idempotent: every evaluation is a file target, and OUT/results.jsonl records each result once.
# - Overlaps: a second invocation finds the lock (OUT/.eval.lock) held and exits 0 at once; the
#   experiment's own evaluation waits for the lock instead.
# - It runs at nice 10, so that a training on the same machine keeps most of its pace.
# Prints one line to stderr: how many result lines it added. Exit codes: 0 ok (also with nothing new, with
# OUT not there yet, or with the lock held), 2 usage, else make's.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ] || [ "${1#*=}" != "$1" ]; then
  echo "usage: $0 OUT [VAR=VALUE...]   (OUT: the experiment's folder, as given to make)" >&2
  exit 2
fi
out=$1; shift
for a in "$@"; do
  # a goal here (all, summary) would wait for the lock this script holds
  [ "${a#*=}" != "$a" ] || { echo "eval-new-checkpoints: '$a' is not VAR=VALUE" >&2; exit 2; }
done
if [ ! -d "$out" ]; then
  echo "eval-new-checkpoints: $out does not exist yet; nothing to evaluate" >&2
  exit 0
fi
out=$(cd "$out" && pwd)
exec 9>>"$out/.eval.lock"
if ! flock -n 9; then
  echo "eval-new-checkpoints: another evaluation of $out is running (it holds $out/.eval.lock); nothing done" >&2
  exit 0
fi
count() { if [ -f "$out/results.jsonl" ]; then wc -l <"$out/results.jsonl"; else echo 0; fi; }
before=$(count)
# -k: a checkpoint that fails (pruned by its run after make listed it) does not hold up the others.
nice -n 10 make -k -f "$here/Makefile" --no-print-directory OUT="$out" "$@" eval
echo "eval-new-checkpoints: $(( $(count) - before )) new result line(s) in $out/results.jsonl" >&2
