# The summary table of experiments/Makefile, as Markdown: one row per checkpoint each run kept, then the
# last checkpoint of each run. Input (jq -s): the lines of every OUT/<method>/checkpoints.jsonl.
# Arguments: --arg data, epochs, seed, knn, linear (the Makefile's settings).
def pct: if . == null then "-" else (. * 10 | round / 10 | tostring) end;
def row: "| \(.method) | \(.checkpoint) | \(.epochs_done) | \(.step) | \(.knn_top1_pct | pct) | \(.linear_top1_pct | pct) | \(.linear_best_top1_pct | pct) |";
def header: "| method | checkpoint | epochs done | step | kNN top-1 % | linear top-1 % | linear best top-1 % |",
  "|---|---|---:|---:|---:|---:|---:|";

"# Experiment summary",
"",
"Pre-training on \($data), \($epochs) epochs, seed \($seed). Top-1 accuracy (%) on the test split, from",
"frozen features of each checkpoint: kNN (`knn-probe \($knn)`) and a linear probe (`linear-probe \($linear)`;",
"its final epoch, and its best epoch, which is chosen on the test split itself, so optimistic).",
"",
"## Last checkpoint of each run",
"",
header,
(group_by(.method) | map(max_by(.step)) | sort_by(-(.linear_top1_pct // 0)) | .[] | row),
"",
"## Every checkpoint",
"",
header,
(sort_by(.method, .step) | .[] | row)
