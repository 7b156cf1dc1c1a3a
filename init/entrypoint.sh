#!/bin/sh
# Container entrypoint. With arguments, they are the VMM command line and
# podtap wraps it (`podtap run -- ARGS`); without, podtap serves as a sidecar
# (`podtap up`, configured through PODTAP_* variables such as
# PODTAP_FD_SOCKET). podtap replaces this shell so it receives the signals.
set -e
if [ "$#" -gt 0 ] && [ "$1" != "up" ] && [ "$1" != "run" ] && [ "$1" != "down" ] && [ "$1" != "inspect" ] && [ "$1" != "exec" ]; then
  exec podtap run -- "$@"
fi
[ "$#" -gt 0 ] || set -- up
exec podtap "$@"
