#!/usr/bin/env bash
# A stand-in for the image's CUDA base, built from Debian's archive where no container registry
# is reachable (CI, air-gapped hosts): Debian 13 minbase + CA certificates, imported as a local
# image. The same Dockerfile then builds on it:
#
#   sudo docker/standin-base.sh trainjob-test-base:trixie
#   docker build --build-arg BASE_IMAGE=trainjob-test-base:trixie --build-arg PYTHON=python3.13 .
#
# Debian 13 ships python3.13 (the lock installs on it; Debian 12's python3.11 is too old for
# it). The CAs in /usr/local/share/ca-certificates/ (a TLS-inspecting proxy's, say) are
# copied in so that apt and pip inside the build trust what this host trusts.
# Needs root and debootstrap (installed from Debian's archive when missing); ~1 min, ~200 MB.
# Does nothing when the tag already exists.
set -euo pipefail
TAG=${1:-trainjob-test-base:trixie}
SUITE=${SUITE:-stable}
if docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "standin-base: $TAG exists"
  exit 0
fi
if ! command -v debootstrap >/dev/null; then
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/tmp/trainjob-apt.log 2>&1 ||
    { tail -n 20 /tmp/trainjob-apt.log >&2; exit 1; }
fi
# The host's Debian mirror (deb822 sources), else Debian's redirector.
MIRROR=${MIRROR:-$(sed -n 's/^URIs: *\(\S*debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources \
  2>/dev/null | head -n 1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
ROOTFS=$(mktemp -d /tmp/standin-base.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT
debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$ROOTFS" "$MIRROR" \
  >"$ROOTFS.log" 2>&1 || { tail -n 20 "$ROOTFS.log" >&2; exit 1; }
rm -f "$ROOTFS.log"
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
  chroot "$ROOTFS" update-ca-certificates >/dev/null 2>&1
fi
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
tar -C "$ROOTFS" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["/bin/bash"]' - "$TAG" >/dev/null
echo "standin-base: $TAG from $SUITE ($MIRROR)"
