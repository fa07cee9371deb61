#!/usr/bin/env bash
# Debian packages of real data: installed system-wide as root; otherwise unpacked into the user cache,
# which Neuratlas' data layer searches first. Tolerates a machine where they are already there.
set -uo pipefail
CACHE=${NEURATLAS_CACHE:-$HOME/.cache/neuratlas}
declare -A CHECK=(
  [dataset-fashion-mnist]=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
  [mricron-data]=/usr/share/mricron/templates/aal.nii.gz
  [fonts-noto-color-emoji]=/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf
)
for pkg in "${!CHECK[@]}"; do
  [ -e "${CHECK[$pkg]}" ] && continue
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -qq "$pkg" >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1; apt-get install -y -qq "$pkg" >/dev/null 2>&1; } \
      || echo "warning: could not install $pkg"
  elif command -v apt-get >/dev/null && command -v dpkg >/dev/null; then
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download "$pkg" >/dev/null 2>&1 && dpkg -x ./*.deb root) || { echo "warning: could not fetch $pkg"; continue; }
    case "$pkg" in
      dataset-fashion-mnist) mkdir -p "$CACHE/fashion-mnist" && cp "$tmp"/root/usr/share/datasets/fashion-mnist/*.gz "$CACHE/fashion-mnist/";;
      fonts-noto-color-emoji) mkdir -p "$CACHE/noto-emoji" && cp "$tmp"/root/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf "$CACHE/noto-emoji/";;
      mricron-data) mkdir -p "$CACHE/mricron-templates" && cp "$tmp"/root/usr/share/mricron/templates/{ch2.nii.gz,aal.nii.gz,aal.nii.txt} "$CACHE/mricron-templates/";;
    esac
    rm -rf "$tmp"
  fi
done
