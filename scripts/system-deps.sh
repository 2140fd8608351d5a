#!/usr/bin/env bash
# Debian packages the workbench uses when they can be had: chromium (static PNG/SVG export through
# kaleido, and the real-browser test) and the text packages that the demo corpus builder reads.
# Installs only what is missing, only as root; otherwise prints what to install and carries on.
set -u
pkgs=(chromium fortunes fortunes-de fortunes-es fortunes-it bible-kjv-text jargon-text dict-devil
      manpages-de manpages-fr manpages-es manpages-it)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "system-deps: missing Debian packages: ${missing[*]}"
  echo "system-deps: install them with: sudo apt-get install -y ${missing[*]}"
  echo "system-deps: without chromium, PNG/SVG export is skipped (HTML and CSV still work)."
  exit 0
fi
echo "system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null 2>&1 || true
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
  || { echo "system-deps: apt-get failed; trying one package at a time";
       for p in "${missing[@]}"; do apt-get install -y -qq --no-install-recommends "$p" >/dev/null 2>&1 || echo "system-deps: could not install $p"; done; }
exit 0
