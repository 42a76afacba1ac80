#!/bin/bash
# `make demo`: volfs on real devices. Shows existing block devices as files
# (on the host, over loop devices).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
"$here/demo-devices.sh"
