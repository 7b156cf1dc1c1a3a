#!/bin/sh
# The images' entrypoint.
#
#   IMAGE                          podtap up (a sidecar; configured with PODTAP_* variables,
#                                  e.g. PODTAP_FD_SOCKET, PODTAP_STATE_DIR)
#   IMAGE up|run|down|inspect|exec|status [ARGS...]
#                                  that podtap command
#   IMAGE --help | --version       podtap's
#   IMAGE VMM [ARGS...]            podtap run -- VMM ARGS...: podtap wraps the VMM
#                                  (options through PODTAP_* variables)
#
# podtap replaces this shell, so it is the container's process 1 and gets the
# engine's signals itself.
set -e
case "${1:-}" in
  "") set -- up ;;
  up | run | down | inspect | exec | status | -*) ;;
  *) set -- run -- "$@" ;;
esac
exec podtap "$@"
