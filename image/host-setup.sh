#!/usr/bin/env bash
# Installs what building and boot-testing the appliance image needs on a Debian 12 build host.
# CI runs on a fresh clone and maybe a fresh machine, so nothing may be assumed installed by hand.
# Idempotent: each step is skipped when its result is already there.
set -eu

sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
export DEBIAN_FRONTEND=noninteractive

# mkosi >= 24 builds GPT disk images with systemd-repart; Debian 12's own mkosi (14) is too old.
# bookworm-backports carries mkosi 24.3 and a systemd-repart that supports --offline.
backports=/etc/apt/sources.list.d/spoke-bookworm-backports.sources
need_update=0
if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "host-setup: adding bookworm-backports to apt's sources ($backports)"
    $sudo_cmd tee "$backports" >/dev/null <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    need_update=1
fi

mkosi_ok() {
    command -v mkosi >/dev/null 2>&1 || return 1
    v="$(mkosi --version 2>/dev/null | awk '{print $2}' | cut -d. -f1)"
    [ -n "$v" ] && [ "$v" -ge 24 ]
}

# Tools the build and the boot test call, by the command that proves each is there.
#   kmod: depmod for the initrd; zstd, cpio: the initrd; dosfstools + mtools: the SPOKE FAT volume;
#   e2fsprogs: mkfs.ext4 for the root and data partitions; qemu + ovmf: the boot test;
#   systemd-container: systemd-nspawn/systemd-dissect for mkosi; debian-archive-keyring: apt signatures;
#   reprepro: mkosi's local repository of the image's systemd 254 debs (build.sh); debugfs
#   (e2fsprogs): the boot test reads the VM's data partition without mounting it.
need=()
for pair in depmod:kmod zstd:zstd cpio:cpio mkfs.vfat:dosfstools mcopy:mtools \
            mkfs.ext4:e2fsprogs qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils sfdisk:fdisk \
            systemd-nspawn:systemd-container bwrap:bubblewrap mosquitto:mosquitto \
            openssl:openssl python3:python3 socat:socat reprepro:reprepro debugfs:e2fsprogs; do
    cmd="${pair%%:*}"; pkg="${pair#*:}"
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || [ -x "/sbin/$cmd" ] || need+=("$pkg")
done
[ -f /usr/share/OVMF/OVMF_CODE_4M.fd ] || need+=(ovmf)
# ukify (from systemd 254) assembles the unified kernel image with python3-pefile.
/usr/bin/python3 -c 'import pefile' 2>/dev/null || need+=(python3-pefile)
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)
mkosi_ok || need_update=1
# mkosi installs systemd-boot into the image with the host's bootctl (systemd-boot from backports,
# to match the backports systemd that systemd-repart pulls in).
boot_ok() { command -v bootctl >/dev/null 2>&1; }

if [ ${#need[@]} -gt 0 ] || ! mkosi_ok || ! boot_ok; then
    if [ "$need_update" -eq 1 ] || [ ! -d /var/lib/apt/lists ] || \
       [ -z "$(ls /var/lib/apt/lists 2>/dev/null | grep -i backports || true)" ]; then
        echo "host-setup: apt-get update"
        $sudo_cmd apt-get update -qq
    fi
    if [ ${#need[@]} -gt 0 ]; then
        echo "host-setup: installing ${need[*]}"
        $sudo_cmd apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
    if ! mkosi_ok; then
        echo "host-setup: installing mkosi from bookworm-backports"
        $sudo_cmd apt-get install -y -qq --no-install-recommends -t bookworm-backports mkosi >/dev/null
    fi
    if ! boot_ok; then
        echo "host-setup: installing systemd-boot (bootctl) from bookworm-backports"
        $sudo_cmd apt-get install -y -qq --no-install-recommends -t bookworm-backports systemd-boot >/dev/null
    fi
fi
# The packaged mosquitto service is not ours: the hub runs its own broker.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet mosquitto 2>/dev/null; then
    $sudo_cmd systemctl disable --now mosquitto >/dev/null 2>&1 || true
fi
echo "host-setup: mkosi $(mkosi --version | awk '{print $2}'), $(qemu-system-x86_64 --version | head -1)"
