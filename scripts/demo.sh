#!/bin/bash
# `make demo`: volfs on real devices. Shows existing block devices as files
# (on the host, over loop devices), then every LV of a volume group as a
# file (in a QEMU guest where the kernel has no device-mapper).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
"$here/demo-devices.sh"
"$here/demo-lvm.sh"
