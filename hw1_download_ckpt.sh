#!/usr/bin/env bash
# Fetch the trained checkpoints listed in checkpoints/MANIFEST into checkpoints/ (run before hw1_1.sh / hw1_2.sh).
#   bash hw1_download_ckpt.sh                                        download what is missing or fails its sha256
#   bash hw1_download_ckpt.sh --write-manifest URL_PREFIX FILE...    list uploaded FILEs as URL_PREFIX/<file name>
# MANIFEST lines are `name sha256 url` ('#' starts a comment). A file is downloaded to <name>.part
# (resumed when one is left from a stopped run), checked, and only then renamed to <name>, so the
# grading scripts never see a partial or unverified file. The client is wget (the course's own), else curl;
# $HW1_DOWNLOADER=curl|wget picks one. hw1_download.sh (the course's name in 2021-22) runs this script.
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DIR="$REPO/checkpoints"
MANIFEST="$DIR/MANIFEST"
SHOWN="checkpoints/MANIFEST"  # how error lines name the table
CLIENT=""                    # curl or wget, picked when the first download starts
FILL="bash hw1_download_ckpt.sh --write-manifest URL_PREFIX checkpoints/p1_classifier.pt checkpoints/p2_deeplab.pt"

die() { echo "error: $1" >&2; exit "${2:-2}"; }  # one line; exit 2 for a bad table or command, 1 for a failed download
sha256() { sha256sum "$1" | cut -d' ' -f1; }
command -v sha256sum >/dev/null || die "sha256sum: not found — install coreutils"

write_manifest() {  # URL_PREFIX FILE...: replace or add each file's line, keep the rest of the table
  [ "$#" -ge 2 ] || die "--write-manifest: needs URL_PREFIX and at least one FILE — e.g. $FILL"
  local prefix="${1%/}" file name tmp
  [ -n "$prefix" ] || die "--write-manifest: empty URL prefix — pass where the files were uploaded, e.g. https://host/hw1"
  shift
  case "$prefix" in *" "*) die "$prefix: URL prefix has a space — percent-encode it (%20)";; esac
  mkdir -p "$DIR" && tmp="$(mktemp "$DIR/.MANIFEST.XXXXXX")" || die "$DIR: cannot write here — use a writable checkout"
  trap 'rm -f "$tmp"' EXIT
  if [ -f "$MANIFEST" ]; then cp "$MANIFEST" "$tmp"; else
    printf '# name sha256 url (filled by: bash hw1_download_ckpt.sh --write-manifest URL_PREFIX FILE...)\n' > "$tmp"
  fi
  for file in "$@"; do
    [ -f "$file" ] || die "$file: file not found — pass the checkpoints you uploaded, e.g. checkpoints/p1_classifier.pt"
    name="$(basename "$file")"
    case "$name" in *" "*) die "$file: file name has a space — rename it";; esac
    [ "$name" != MANIFEST ] || die "$file: MANIFEST is the table itself — pass the checkpoints"
    awk -v n="$name" '$1 != n' "$tmp" > "$tmp.new" && mv "$tmp.new" "$tmp"
    echo "$name $(sha256 "$file") $prefix/$name" >> "$tmp"
    echo "listed $name: upload $file to $prefix/$name"
  done
  mv "$tmp" "$MANIFEST" && trap - EXIT
  echo "wrote $SHOWN; commit it"
}

pick_client() {  # wget when present, else curl; only once something must be downloaded
  CLIENT="${HW1_DOWNLOADER:-$(command -v wget >/dev/null && echo wget || echo curl)}"
  case "$CLIENT" in curl|wget) command -v "$CLIENT" >/dev/null || die "$CLIENT: not found — install wget or curl";;
    *) die "HW1_DOWNLOADER=$CLIENT: unknown client — use curl or wget";; esac
}

fetch() {  # URL PART: download to PART, resuming it; prints the client's last line when it fails
  local err rc
  err="$(mktemp)"
  if [ "$CLIENT" = curl ]; then
    curl -fsSL --retry 3 --connect-timeout 30 -C - -o "$2" "$1" 2>"$err"
  else
    wget -nv -c --tries=3 --timeout=30 -O "$2" "$1" 2>"$err"
  fi
  rc=$?
  [ "$rc" -eq 0 ] || tail -n 1 "$err"
  rm -f "$err"
  return "$rc"
}

unreachable() {  # RC: did the client fail to reach the server at all (name, connection, timeout)?
  if [ "$CLIENT" = curl ]; then [[ " 5 6 7 28 35 52 56 " == *" $1 "* ]]; else [ "$1" -eq 4 ]; fi
}

download() {  # NAME SHA URL: checkpoints/NAME verified against SHA, or one error line and exit 1
  local name="$1" sha="$2" url="$3" dest="$DIR/$1" part="$DIR/$1.part" attempt why rc got
  if [ -f "$dest" ]; then
    if [ "$(sha256 "$dest")" = "$sha" ]; then echo "checkpoints/$name: present, sha256 verified"; return; fi
    echo "checkpoints/$name: sha256 does not match $SHOWN; downloading it again (replaced once verified)"
  fi
  # A .part left by a stopped run is resumed. If the server cannot resume (curl exit 33 from e.g.
  # python's http.server) or the bytes come out wrong (the file changed upstream), it is fetched once afresh;
  # a server that cannot be reached at all keeps the .part for the next run.
  [ -n "$CLIENT" ] || pick_client
  for attempt in resume fresh; do
    if [ "$attempt" = resume ]; then
      [ -s "$part" ] || continue
      echo "checkpoints/$name: resuming the partial download $name.part from $url"
    else
      rm -f "$part"
      echo "checkpoints/$name: downloading $url"
    fi
    why="$(fetch "$url" "$part")"
    rc=$?
    if [ "$rc" -ne 0 ]; then
      [ "$attempt" = fresh ] || unreachable "$rc" || continue
      [ -s "$part" ] || rm -f "$part"
      die "$url: download of $name failed (${why:-$CLIENT exit $rc}) — check the network and the URL in $SHOWN" 1
    fi
    got="$(sha256 "$part")"
    if [ "$got" = "$sha" ]; then
      mv -f "$part" "$dest"
      echo "checkpoints/$name: downloaded, sha256 verified"
      return
    fi
  done
  rm -f "$part"
  die "$url: sha256 $got is not the $sha that $SHOWN lists; not kept — upload the right file or re-run --write-manifest" 1
}

case "${1:-}" in -h|--help) sed -n "2,8s/^# \{0,1\}//p" "${BASH_SOURCE[0]}"; exit;; esac
if [ "${1:-}" = --write-manifest ]; then shift; write_manifest "$@"; exit; fi
[ "$#" -eq 0 ] || die "$1: unknown argument — usage: bash hw1_download_ckpt.sh [--write-manifest URL_PREFIX FILE...]"
[ -f "$MANIFEST" ] || die "$SHOWN: not found — restore it from the repository (git checkout checkpoints/MANIFEST)"

lines=()
lineno=0
while IFS= read -r line || [ -n "$line" ]; do
  lineno=$((lineno + 1))
  line="${line%%#*}"
  read -r name sha url extra <<<"${line//$'\r'/}"  # a table edited on Windows has CRLF ends
  [ -n "${name:-}" ] || continue
  where="$SHOWN: line $lineno"
  [ -n "${url:-}" ] && [ -z "${extra:-}" ] || die "$where: expected 'name sha256 url' — fix the line or re-run --write-manifest"
  sha="${sha,,}"
  [[ "$sha" =~ ^[0-9a-f]{64}$ ]] || die "$where: '$sha' is not a sha256 (64 hex digits) — fix the line"
  [[ "$name" != */* && "$name" != .* && "$name" != MANIFEST ]] ||
    die "$where: '$name' must be a plain file name — list it as e.g. p1_classifier.pt"
  lines+=("$name $sha $url")
done < "$MANIFEST"
[ "${#lines[@]}" -gt 0 ] || die "$SHOWN: no checkpoints listed — train and upload them, then $FILL"

for entry in "${lines[@]}"; do
  read -r name sha url <<<"$entry"
  download "$name" "$sha" "$url"
done
echo "all ${#lines[@]} checkpoint(s) in checkpoints/ verified"
