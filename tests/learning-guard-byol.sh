# The learning guard for the BYOL family (issue 17): LEWEL_B from the small-lewelb preset (width 8, batch 64,
# 12 epochs = 372 steps on the 2,000-image fixture) must lift kNN above its initialisation by BYOL_MARGIN points,
# AND its loss must fall to at most half its first epoch's mean (and stay >= 0); see learning-guard.sh for the
# protocol. Measured on the 2-core build machine, 2026-12-07, debug build (kNN top-1 %, epoch mean loss first ->
# last):
#   initialisation                 64.4
#   the guard's training           68.4 (+4.0)   1.544 -> 0.408
#   LEWEL_FAULT=detach-backbone    42.2 (-22.2)  2.317 -> 1.359
#   LEWEL_FAULT=frozen-ema         60.3 (-4.1)   2.116 -> 1.635
#   LEWEL_FAULT=negated-loss       66.9 (+2.5)   -6.25 -> -7.59 (the optimised sign)
# The kNN margin alone misses no control, but the negated loss only by 0.5 points (BYOL's features improve a little
# even when its loss is climbed: the augmentations and BN still act); the loss condition catches it by far.
export FAMILY=byol BYOL_EPOCHS=${BYOL_EPOCHS:-12} BYOL_MARGIN=${BYOL_MARGIN:-3}
exec bash "$(dirname "${BASH_SOURCE[0]}")/learning-guard.sh"
