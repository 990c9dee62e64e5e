#!/usr/bin/env bash
# Installs everything `make demo` and `make test` need on a fresh Debian or Ubuntu machine:
# mosquitto (the managed broker), prometheus (promtool and server, for metric tests), postgresql
# (registry tests) and chromium (browser tests) from apt when missing, then a virtual environment.
set -eu
venv="${1:-.venv}"

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# prometheus brings promtool and the server the health metric tests run for real.
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
# Headless Chromium renders the dashboard, status page and report in the browser tests.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
# The fault suite (tests/faults): nft drops packets inside an appliance's network namespace,
# libfaketime steps an appliance's wall clock.
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || need_apt+=(nftables)
dpkg -s libfaketime >/dev/null 2>&1 || need_apt+=(libfaketime)
# PostgreSQL's server tools (initdb, pg_ctl): registry tests start a throw-away cluster on a free
# port; the packaged service is left alone and not used.
command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null \
    || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: installing ${need_apt[*]} with apt-get"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends \
        "${need_apt[@]}" >/dev/null
fi
# The OS-update and image tests (tests/delivery/test_os_staging.py, tests/image) run the real
# systemd-sysupdate and systemd-repart (systemd >= 254), ukify, debugfs, mtools and QEMU: the
# image's host tools. Without them those tests skip, so `make test` installs them first, on
# Debian 12 (they come from bookworm-backports there); elsewhere it says what is skipped.
if grep -qs '^VERSION_CODENAME=bookworm' /etc/os-release; then
    bash "$(dirname "$0")/../image/host-setup.sh"
else
    echo "setup: not Debian 12: the OS-update and image tests skip (image/host-setup.sh is for bookworm)"
fi
# TPM-sealed device keys (appliance/tpm.py): tpm2-tools seals and unseals; the tests run a
# software TPM per simulated box (swtpm). Optional: without them the TPM tests skip and say why.
need_tpm=()
command -v tpm2_unseal >/dev/null 2>&1 || need_tpm+=(tpm2-tools)
command -v swtpm >/dev/null 2>&1 || need_tpm+=(swtpm)
if [ ${#need_tpm[@]} -gt 0 ]; then
    # tpm2-tools pulls in udev; where systemd comes from bookworm-backports (for mkosi), udev
    # must come from there too, or apt refuses the install.
    if ! dpkg -s udev >/dev/null 2>&1 \
            && dpkg-query -W -f='${Version}' libudev1 2>/dev/null | grep -q bpo; then
        need_tpm+=(udev/bookworm-backports)
    fi
    echo "setup: installing ${need_tpm[*]} with apt-get"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends "${need_tpm[@]}" >/dev/null \
        || echo "setup: could not install ${need_tpm[*]}; the TPM key tests will be skipped"
fi
# The packaged mosquitto service is not ours: the hub runs its own broker.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet mosquitto 2>/dev/null; then
    systemctl disable --now mosquitto >/dev/null 2>&1 || true
fi
# Nor is the packaged Prometheus: the tests start their own on a free port.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating the virtual environment in $venv"
    python3 -m venv "$venv"
fi
echo "setup: installing the project, the hub's packages and the test tools (torch is pinned to 2.13.0, CPU)"
"$venv/bin/pip" install -q --upgrade pip >/dev/null
"$venv/bin/pip" install -q -e ".[hub,dev]"
