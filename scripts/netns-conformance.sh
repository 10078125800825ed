#!/usr/bin/env bash
# Runs WireGuard's userspace conformance script (tests/netns.sh from the wireguard-go source,
# which is not part of this repository) against a daemon, isolated in a private mount
# namespace whose /run is a fresh tmpfs: its network namespaces and UAPI sockets
# (/var/run/wireguard/*.sock) vanish when it ends and cannot collide with anything else.
#
#   sudo scripts/netns-conformance.sh PATH/TO/wireguard-go/tests/netns.sh [PROGRAM]
#
# PROGRAM defaults to this repository's bin/strata-wg; pass /usr/bin/wireguard-go to compare.
# The exit status is the script's: 0 means every step passed.
set -euo pipefail
script=${1:?usage: $0 PATH/TO/netns.sh [PROGRAM]}
root=$(cd "$(dirname "$0")/.." && pwd)
program=${2:-$root/bin/strata-wg}
[[ $(id -u) -eq 0 ]] || { echo "netns-conformance: needs root (network namespaces, TUN)" >&2; exit 2; }
[[ -r $script ]] || { echo "netns-conformance: cannot read $script" >&2; exit 2; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
unshare --mount --propagation private bash -c '
  mount -t tmpfs tmpfs "$1" && mkdir -p "$1/netns" "$1/wireguard" && mount --bind "$1" /run &&
  cd /tmp && exec bash "$2" "$3"' _ "$dir" "$(readlink -f "$script")" "$program"
