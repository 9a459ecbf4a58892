#!/usr/bin/env bash
# The course's 2021-22 name for hw1_download_ckpt.sh: the same command, the same flags.
exec bash "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/hw1_download_ckpt.sh" "$@"
