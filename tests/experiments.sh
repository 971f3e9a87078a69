# experiments/Makefile and its cron evaluator, tiny, on the Fashion-MNIST fixture: an interrupted run is
# resumed; the cron evaluator evaluates each complete checkpoint once, never a half-written one, and stands
# aside while the lock is held; make then does only what is left; the outputs are valid JSON and PNG; a
# second make does nothing (make -q says so); a deleted result is re-made alone (with what depends on it),
# from results.jsonl rather than computed again; make -n on a fresh OUT creates nothing.
set -euo pipefail
# As from a shell, whatever make runs the suite (`make -s test` must not silence the makes below).
unset MAKEFLAGS MFLAGS MAKELEVEL
exp=$(cd "$FIXTURES/../experiments" && pwd)
out=$TMP/out
# 4 steps of 32 images (the fixture has 200), a checkpoint every 2 steps, a step event every step.
common=(BIN="$BIN" DATA="$FIXTURES/fashion-mnist-tiny" EPOCHS=1 MAX_STEPS=4
  "PRETRAIN_FLAGS=--batch-size 32 --ckpt-every-steps 2 --log-every 1 --warmup-epochs 0")
mk() { make -f "$exp/Makefile" --no-print-directory OUT="$out" "${common[@]}" "$@"; }
evaluator() { "$exp/eval-new-checkpoints.sh" "$out" "${common[@]}"; }
fail() { echo "experiments: $*" >&2; exit 1; }
for tool in make jq flock; do command -v "$tool" >/dev/null || fail "needs $tool on the PATH (jq: apt-get install jq; flock: util-linux)"; done
# logged LOG CMD...: runs CMD with its output in $TMP/LOG, which is shown when CMD fails.
logged() {
  local log=$TMP/$1; shift
  "$@" >"$log" 2>&1 || { tail -n 20 "$log" >&2; fail "failed: $*"; }
}
# Every file under OUT with its modification time, to see what a command rewrote.
snapshot() { find "$out" -type f -printf '%P %T@\n' | sort; }

logged help.txt mk help
logged plan.txt mk -n OUT="$TMP/fresh"
[ ! -e "$TMP/fresh" ] || fail "make -n created $TMP/fresh"
grep -qF -- "--out $TMP/fresh/lewel-b/run" "$TMP/plan.txt" || fail "make -n does not plan the lewel-b run"

# 1. An interrupted run: byol stopped after step 2, before make recorded it as done. make resumes it.
logged make-1.log mk MAX_STEPS=2 "$out/byol/pretrain.json"
rm "$out/byol/pretrain.json"
logged make-2.log mk -j2 pretrain
grep -qF -- "--resume $out/byol/run" "$TMP/make-2.log" || fail "the byol run was not resumed"
jq -se '[.[] | select(.event == "start")] | length == 2 and (.[1].resumed_from | endswith("step-00000002.safetensors"))' \
  "$out/byol/run/events.jsonl" >/dev/null || fail "byol's events.jsonl does not show one start and one resume"
for m in lewel-b byol; do
  jq -e '.status == "max-steps" and .step == 4' "$out/$m/pretrain.json" >/dev/null || fail "$m/pretrain.json"
  for s in 2 4; do [ -f "$out/$m/run/ckpt/step-0000000$s.json" ] || fail "$m has no checkpoint at step $s"; done
done

# 2. Checkpoints a run is still writing: tensors without their sidecar yet, a temporary file, and a pruned
# checkpoint whose sidecar outlives its tensors for a moment. None of them may be evaluated.
ck=$out/lewel-b/run/ckpt
cp "$ck/step-00000004.safetensors" "$ck/step-00000006.safetensors"
cp "$ck/step-00000004.safetensors" "$ck/.step-00000008.safetensors.tmp-1-0.safetensors"
cp "$ck/step-00000004.json" "$ck/step-00000010.json"

# 3. The cron evaluator: stands aside while the lock is held, then evaluates the 4 complete checkpoints
# (2 probes each), then finds nothing new.
exec 8>>"$out/.eval.lock"
flock -n 8
logged eval-0.log evaluator
grep -q "nothing done" "$TMP/eval-0.log" || fail "the evaluator did not stand aside: $(cat "$TMP/eval-0.log")"
[ ! -e "$out/lewel-b/eval" ] || fail "the evaluator worked while the lock was held"
exec 8>&-
logged eval-1.log evaluator
grep -q "eval-new-checkpoints: 8 new result line(s)" "$TMP/eval-1.log" || fail "first evaluation: $(tail -n 3 "$TMP/eval-1.log")"
[ "$(jq -c . "$out/results.jsonl" | wc -l)" = 8 ] || fail "results.jsonl does not hold 8 valid lines"
for bad in step-00000006 step-00000008 step-00000010; do
  if compgen -G "$out/lewel-b/eval/$bad.*" >/dev/null; then fail "the incomplete checkpoint $bad was evaluated"; fi
done
before=$(snapshot)
logged eval-2.log evaluator
grep -q "eval-new-checkpoints: 0 new result line(s)" "$TMP/eval-2.log" || fail "second evaluation: $(tail -n 3 "$TMP/eval-2.log")"
[ "$(snapshot)" = "$before" ] || fail "the second evaluation rewrote files: $(diff <(echo "$before") <(snapshot) | head)"

# 4. make finishes the experiment without evaluating anything again.
logged make-3.log mk -j2
[ "$(wc -l <"$out/results.jsonl")" = 8 ] || fail "make evaluated again what the evaluator had done"
if grep -q -- "-probe " "$TMP/make-3.log"; then fail "make ran a probe again"; fi
for m in lewel-b byol; do
  for s in 2 4; do
    e=$out/$m/eval/step-0000000$s
    jq -e '.event == "result" and .probe == "knn" and (.top1_pct | type == "number")' "$e.knn.json" >/dev/null ||
      fail "$e.knn.json"
    jq -e '.event == "result" and .probe == "linear" and (.final_top1_pct | type == "number")' "$e.linear.json" \
      >/dev/null || fail "$e.linear.json"
  done
  jq -se 'length == 2 and all(.[]; (.knn_top1_pct | type == "number") and (.linear_top1_pct | type == "number"))' \
    "$out/$m/checkpoints.jsonl" >/dev/null || fail "$m/checkpoints.jsonl"
  jq -se 'last | .event == "end" and .verified == true' "$out/$m/backbone.jsonl" >/dev/null || fail "$m: export not verified"
  [ -s "$out/$m/backbone.safetensors" ] || fail "$m/backbone.safetensors"
done
for png in curves.png maps/grid.png; do
  [ "$(head -c 8 "$out/$png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] || fail "$png is not a PNG"
done
[ "$(grep -c '^| \(lewel-b\|byol\) | step-' "$out/summary.md")" = 6 ] || fail "summary.md: $(cat "$out/summary.md")"

# 5. Nothing twice: make -q says up to date, and make touches nothing.
mk -q || fail "make -q: not up to date after a complete make"
before=$(snapshot)
logged make-4.log mk
[ "$(snapshot)" = "$before" ] || fail "a second make rewrote files: $(diff <(echo "$before") <(snapshot) | head)"

# 6. A deleted result is re-made alone (then what depends on it), from results.jsonl.
rm "$out/lewel-b/eval/step-00000002.linear.json"
if mk -q; then fail "make -q: up to date with a result missing"; fi
before=$(snapshot)
logged make-5.log mk
changed=$( (diff <(echo "$before") <(snapshot) || true) | sed -n 's/^> \([^ ]*\) .*/\1/p' | sort | tr '\n' ' ')
[ "$changed" = "lewel-b/checkpoints.jsonl lewel-b/eval/step-00000002.linear.json lewel-b/eval/step-00000002.linear.jsonl summary.md " ] ||
  fail "re-making one result rewrote: $changed"
[ "$(wc -l <"$out/results.jsonl")" = 8 ] || fail "the deleted result was computed again instead of read back"
mk -q || fail "make -q: not up to date after re-making the result"

# 7. A higher EPOCHS lengthens the runs in place (pretrain --extend-epochs), and the new checkpoints are evaluated.
# (two makes: make lists the checkpoints when it starts, and the longer run prunes this test's step checkpoints,
# which --keep-every-epochs does not keep; see the pre-training rule)
logged make-6.log mk EPOCHS=2 MAX_STEPS=8 "$out/byol/pretrain.json"
logged make-7.log mk EPOCHS=2 MAX_STEPS=8 "$out/byol/checkpoints.jsonl"
grep -qF -- "--extend-epochs" "$TMP/make-6.log" || fail "EPOCHS=2 did not extend the byol run"
jq -e '.status == "max-steps" and .step == 8' "$out/byol/pretrain.json" >/dev/null || fail "byol/pretrain.json after EPOCHS=2"
jq -e '.pretrain.epochs == 2 and (.pretrain.extended | length == 1 and .[0].from_epochs == 1 and .[0].to_epochs == 2)' \
  "$out/byol/run/config.json" >/dev/null || fail "byol's config.json does not record the extension"
jq -se 'map(.step) | last == 8' "$out/byol/checkpoints.jsonl" >/dev/null ||
  fail "the new checkpoints were not evaluated: $(jq -c .step "$out/byol/checkpoints.jsonl" | tr '\n' ' ')"
mk -q EPOCHS=2 MAX_STEPS=8 "$out/byol/checkpoints.jsonl" || fail "make -q: not up to date after the extension"
echo "experiments: ok"
