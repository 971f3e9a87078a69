#!/usr/bin/env bash
# The benchmarks' natural photos (Debian package mate-backgrounds, GPL-2+): installs them when missing and
# prints their folder. Used by bench-augment.sh and bench-e2e.sh.
set -euo pipefail
photos=/usr/share/backgrounds/mate/nature
if [ ! -d "$photos" ]; then
  echo "${1:-bench}: installing mate-backgrounds (the benchmark's photos)" >&2
  if [ "$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi
  $sudo apt-get install -y mate-backgrounds >/dev/null 2>&1 || { $sudo apt-get update >/dev/null && $sudo apt-get install -y mate-backgrounds >/dev/null; }
fi
echo "$photos"
