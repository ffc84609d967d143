#!/usr/bin/env bash
# Make sure the Debian packages that the tests, the demo and the browser test need are present.
#
#   scripts/install-system-deps.sh           check, and install what is missing (as root)
#   scripts/install-system-deps.sh --check   check only; exit 1 and list what is missing
#
# Each need is a file or a command that must exist, mapped to the Debian package that provides it.
# Nothing is installed when everything is present, so this is cheap to run again. When something is
# missing and we run as root, one `apt-get update` and one `apt-get install` of the missing packages
# follow. The Debian orthanc package wants to start a system service; the tests start their own
# Orthanc instances, so a policy-rc.d that forbids service starts is in place during the install.
set -euo pipefail

# need  PACKAGE  FILE-OR-COMMAND...
NEEDS=(
  "orthanc /usr/sbin/Orthanc"
  "orthanc-python /usr/share/orthanc/plugins/libOrthancPython.so"
  "dcmtk storescu echoscu dsrdump dcmcjpeg dcmcjpls dcmcrle storescp"
  "dicom3tools dciodvfy"
  "fonts-dejavu-core /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf /usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
  "chromium chromium"
  "chromium-driver chromedriver"
  "openssl openssl"
  # the FHIR test server (tests/fhir_server); machines of this kind ship Node.js 20, Debian's is older
  "nodejs node"
  "npm npm"
  # container images, built and run by the tests (docker/): Debian's daemon and client, a local base image
  "docker.io /usr/sbin/dockerd /usr/bin/docker"
  "mmdebstrap mmdebstrap"
  # the metrics test scrapes the node with a real Prometheus; the two-host test builds network namespaces
  "prometheus /usr/bin/prometheus"
  "iproute2 ip"
  # the Encapsulated PDF report is rendered to PNG in its test; Orthanc's DICOMweb plugin is the DICOMweb PACS
  "poppler-utils pdftoppm"
  "orthanc-dicomweb /usr/share/orthanc/plugins/libOrthancDicomWeb.so"
)

check_only=0
case "${1:-}" in
  --check) check_only=1 ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

present() {
  local thing=$1
  if [[ $thing == /* ]]; then
    [[ -e $thing ]]
  else
    command -v "$thing" >/dev/null 2>&1 || [[ -x /usr/bin/$thing || -x /usr/sbin/$thing ]]
  fi
}

missing_packages() {
  local line pkg rest thing
  for line in "${NEEDS[@]}"; do
    read -r pkg rest <<<"$line"
    for thing in $rest; do
      if ! present "$thing"; then
        echo "$pkg"
        break
      fi
    done
  done
}

mapfile -t missing < <(missing_packages)
if ((${#missing[@]} == 0)); then
  echo "system dependencies: all present"
  exit 0
fi

install_cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"
if ((check_only)); then
  echo "system dependencies missing: ${missing[*]}" >&2
  echo "install them with: $install_cmd" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: missing system packages (${missing[*]}) and no apt-get here: this set-up expects Debian 12." >&2
  exit 1
fi
if [[ $(id -u) != 0 ]]; then
  echo "error: missing system packages: ${missing[*]}" >&2
  echo "run as root (or with sudo): $install_cmd" >&2
  exit 1
fi

echo "system dependencies: installing ${missing[*]}"

# Keep the orthanc package (and any other) from starting a service: policy-rc.d exit 101 means
# "action forbidden" to invoke-rc.d. An existing policy is left exactly as it is.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\n# temporary, from progemu-pacs scripts/install-system-deps.sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  made_policy=1
fi
cleanup() {
  if ((made_policy)); then rm -f "$policy"; fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
apt_opts=(-o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)
for attempt in 1 2 3; do
  if apt-get "${apt_opts[@]}" update; then break; fi
  if ((attempt == 3)); then echo "error: apt-get update failed" >&2; exit 1; fi
  sleep $((attempt * 10))
done
apt-get "${apt_opts[@]}" install -y --no-install-recommends "${missing[@]}"

# Belt and braces: had a service been started anyway, stop exactly that process (by its pid file,
# never by name: the tests' own Orthanc instances run the same binary).
if [[ -s /run/orthanc.pid ]] && command -v start-stop-daemon >/dev/null 2>&1; then
  start-stop-daemon --stop --quiet --oknodo --retry=TERM/15/KILL/5 --pidfile /run/orthanc.pid || true
  rm -f /run/orthanc.pid
fi

mapfile -t still < <(missing_packages)
if ((${#still[@]})); then
  echo "error: still missing after apt-get install: ${still[*]}" >&2
  exit 1
fi
echo "system dependencies: installed ${missing[*]}"
