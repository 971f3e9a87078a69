# Every tool runs from any folder without LD_LIBRARY_PATH (the rpath to torch/lib), answers --help
# with exit 0 and the exit codes, and --version.
set -euo pipefail
tools="augment pretrain embed linear-probe knn-probe finetune-semi export-backbone viz-maps plot-events"
cd /
for t in $tools; do
  env -u LD_LIBRARY_PATH -u LIBTORCH "$BIN/$t" --help >"$TMP/help.txt"
  grep -q "Exit codes" "$TMP/help.txt" || { echo "$t --help lacks the exit codes"; exit 1; }
  grep -q "Example" "$TMP/help.txt" || { echo "$t --help lacks an example"; exit 1; }
  env -u LD_LIBRARY_PATH "$BIN/$t" --version | grep -q "^$t " || { echo "$t --version"; exit 1; }
done
