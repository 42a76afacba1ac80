#!/bin/bash
# Installs what building and testing volfs needs on a fresh Debian 12 machine
# (root): the host test tools, the QEMU guest harness for LVM, and the Go
# linters. Idempotent: runs apt-get only for what is missing.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
pkgs=(fuse3 fio qemu-utils e2fsprogs util-linux attr rsync psmisc shellcheck
      qemu-system-x86 qemu-system-common linux-image-amd64 lvm2 thin-provisioning-tools
      sanlock lvm2-lockd
      busybox-static xz-utils cpio kmod binutils jq make systemd logrotate
      libvirt-daemon-system libvirt-clients)
need=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  apt-get update -qq
  # INITRD=No: the guest boots the kernel with its own tiny initramfs; the
  # Debian initrd build (about 35 s) would never be used.
  INITRD=No apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
export PATH=$PATH:/usr/local/go/bin
gobin=$(go env GOPATH)/bin
if [ ! -x "$gobin/staticcheck" ]; then
  echo "installing staticcheck"
  go install honnef.co/go/tools/cmd/staticcheck@v0.8.2
fi
