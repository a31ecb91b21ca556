#!/usr/bin/env bash
# Installs the local stack's PACS (Orthanc + its DICOMweb plugin, Debian packages) where this
# machine allows: as root with apt-get. The packages' own system service is never started
# (a policy-rc.d denies service starts during the install); `uae-ray stack up` runs Orthanc
# in the stack's run folder. Elsewhere it says why it skips, and the PACS tests skip too.
set -euo pipefail
if command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ]; then
  if [ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; then exit 0; fi
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install_pacs: skipped (needs root and apt-get); install orthanc and orthanc-dicomweb for the PACS" >&2
  exit 0
fi
policy=/usr/sbin/policy-rc.d
if [ -e "$policy" ]; then
  saved=$(mktemp); cp -p "$policy" "$saved"
else
  saved=""
fi
restore() { if [ -n "$saved" ]; then mv "$saved" "$policy"; else rm -f "$policy"; fi; }
trap restore EXIT
printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"
echo "install_pacs: apt-get install orthanc orthanc-dicomweb" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends orthanc orthanc-dicomweb >/dev/null
