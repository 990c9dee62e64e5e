#!/usr/bin/env bash
# Builds the Spoke appliance disk image with mkosi: one command per flavour.
#
#   image/build.sh [--profile cpu|nvidia] (--hub-home DIR | --trust-key FILE) [--output-dir DIR]
#                  [--version V] [--extra-tree DIR]... [--without-extras]
#
# --version stamps the OS version (default 1): os-release's IMAGE_VERSION, the UKI's name and
# the root slot's label. --extra-tree overlays a file tree on the image (mkosi ExtraTrees=), e.g.
# a site's systemd drop-ins. --without-extras leaves the flavour's Python extra out (the OS part
# of the flavour is still built): to check e.g. the nvidia driver layer on a host that cannot
# fetch TensorRT's wheels.
#
# Besides the disk image, the build writes the version's OS update artefacts into
# OUTPUT_DIR/spoke-PROFILE_V.os/ (manifest.json, SHA256SUMS, spoke_V.efi, spoke_V.root.raw.gz):
# what `spoke-hub os publish --home H DIR` takes.
#
# 1. installs the host tools (image/host-setup.sh; CI starts from a fresh clone),
# 2. builds a wheelhouse of the project and its dependencies on the host (`pip wheel`), so the
#    image build and the appliance never download Python packages,
# 3. takes the provisioning public key the appliance will trust, from a hub home
#    (`spoke-hub bundle pubkey`) or a key file,
# 4. runs mkosi with the chosen profile; the image is OUTPUT_DIR/spoke-PROFILE.raw.
set -eu

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
profile=cpu
hub_home=""
trust_key=""
out_dir="$here/build/out"
venv="${VENV:-$repo/.venv}"
without_extras=0
version=1
extra_trees=()

while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile="$2"; shift 2 ;;
        --hub-home) hub_home="$2"; shift 2 ;;
        --trust-key) trust_key="$2"; shift 2 ;;
        --output-dir) out_dir="$2"; shift 2 ;;
        --version) version="$2"; shift 2 ;;
        --extra-tree) extra_trees+=(--extra-tree "$(cd "$2" && pwd)"); shift 2 ;;
        --without-extras) without_extras=1; shift ;;
        -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$profile" in
    cpu) extras="" ;;
    nvidia) extras="gpu" ;;
    *) echo "build.sh: unknown profile '$profile' (cpu or nvidia)" >&2; exit 2 ;;
esac
[ "$without_extras" -eq 0 ] || extras=""
# The version names files, a partition label and a boot entry: what appliance/osupdate.py allows.
[[ "$version" =~ ^[0-9][A-Za-z0-9.+-]{0,63}$ ]] || {
    echo "build.sh: --version '$version' must start with a digit (letters, digits, . + - after)" >&2
    exit 2; }
if [ -z "$hub_home" ] && [ -z "$trust_key" ]; then
    echo "build.sh: say which provisioning key the image trusts: --hub-home DIR or --trust-key FILE" >&2
    exit 2
fi
[ "$(id -u)" -eq 0 ] || { echo "build.sh: mkosi builds disk images as root" >&2; exit 1; }

t0=$(date +%s)
bash "$here/host-setup.sh"

ctx="$here/build/context-$profile"
mkdir -p "$ctx/wheelhouse" "$out_dir"

# The wheelhouse: the project's own wheel, rebuilt every time from this tree, and every
# dependency as a wheel for CPython 3.11 on x86_64 (the host is Debian 12 too, like the image).
echo "build.sh: building the wheelhouse ($profile${extras:+, extras: $extras})"
[ -x "$venv/bin/pip" ] || { echo "build.sh: no venv at $venv (run make setup)" >&2; exit 1; }
rm -f "$ctx"/wheelhouse/spoke-*.whl
# The project's wheel comes from the work tree (what a developer is changing), or with
# SPOKE_IMAGE_SOURCE=head from the last commit only (git archive), for a build that does not
# pick up half-written files of someone working in the same tree.
src="$repo"
if [ "${SPOKE_IMAGE_SOURCE:-worktree}" = head ]; then
    src="$here/build/source-head"
    rm -rf "$src" && mkdir -p "$src"
    git -C "$repo" archive HEAD | tar -x -C "$src"
    echo "build.sh: the project's wheel is built from HEAD ($(git -C "$repo" rev-parse --short HEAD))"
fi
req="$src"
[ -z "$extras" ] || req="$src[$extras]"
constraints=()
profile_constraints="$here/mkosi/mkosi.profiles/$profile/constraints.txt"
[ ! -f "$profile_constraints" ] || constraints=(--constraint "$profile_constraints")
"$venv/bin/pip" wheel --quiet --disable-pip-version-check --wheel-dir "$ctx/wheelhouse" \
    ${constraints[@]+"${constraints[@]}"} "$req" \
    2> >(grep -v -e "is ignored: it is neither a file nor a directory" -e BuildBackendWarning \
              -e "return '\\\\n'.join" >&2)
t_wheels=$(date +%s)

# The trusted provisioning key.
if [ -n "$hub_home" ]; then
    "$venv/bin/spoke-hub" bundle pubkey --home "$hub_home" >"$ctx/provisioning.pub.new"
else
    cp "$trust_key" "$ctx/provisioning.pub.new"
fi
grep -q "BEGIN PUBLIC KEY" "$ctx/provisioning.pub.new" || {
    echo "build.sh: the provisioning key is not a PEM public key" >&2; exit 1; }
mv "$ctx/provisioning.pub.new" "$ctx/provisioning.pub"
cp "$repo/docs/IMAGE.md" "$ctx/IMAGE.md" 2>/dev/null || echo "see docs/IMAGE.md" >"$ctx/IMAGE.md"

# systemd 254 from bookworm-backports for the image (and its initrd): Debian 12's systemd 252
# ships neither systemd-sysupdate nor its download helper, which the A/B OS updates need, and
# its systemd-boot stub is older than the host's ukify. The host's apt fetches the debs from its
# signed backports lists; mkosi offers them as a local package directory, where they are the
# newest versions, so apt takes them over 252. (Backports as an image repository instead makes
# mkosi's initrd package list fail on a name only backports' dracut mentions.)
debs="$here/build/systemd-debs"
mkdir -p "$debs"
systemd_debs="systemd systemd-sysv systemd-dev systemd-boot systemd-boot-efi systemd-container
    udev libsystemd0 libsystemd-shared libudev1 systemd-timesyncd libpam-systemd libnss-systemd"
missing=()
for deb in $systemd_debs; do
    ls "$debs/${deb}_"*.deb >/dev/null 2>&1 || missing+=("$deb/bookworm-backports")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "build.sh: fetching systemd from bookworm-backports into $debs"
    (cd "$debs" && apt-get download -q "${missing[@]}" \
        2> >(grep -v "Download is performed unsandboxed" >&2))
fi

# mkosi's apt and dpkg output is long: it goes to a log, printed only when the build fails.
mkosi_log="$out_dir/spoke-$profile.mkosi.log"
echo "build.sh: mkosi build ($profile), log in $mkosi_log"
mkosi --directory "$here/mkosi" \
      --profile "$profile" \
      --output "spoke-$profile" \
      --output-dir "$out_dir" \
      --build-sources "$ctx:" \
      --environment "SPOKE_EXTRAS=$extras" \
      --image-version "$version" \
      --package-directory "$debs" \
      ${extra_trees[@]+"${extra_trees[@]}"} \
      --force \
      build >"$mkosi_log" 2>&1 || {
    echo "build.sh: mkosi failed; the last 200 lines of $mkosi_log:" >&2
    tail -n 200 "$mkosi_log" >&2
    exit 1
}
t1=$(date +%s)

raw="$out_dir/spoke-$profile.raw"

# The OS update artefacts of this version, in the layout `spoke-hub os publish` takes
# (provisioning/osupdates.py): the UKI (hard-linked where the file system allows) and root slot
# A's contents (mkosi's split file, the whole 3 GiB slot, sparse here) compressed with gzip -1:
# what every appliance downloads is then the used blocks, not the slot (systemd-pull inflates
# it into the slot; docs/IMAGE.md says why gzip and not xz or zstd).
update="$out_dir/spoke-${profile}_$version.os"
rm -rf "$update" && mkdir -p "$update"
ln -f "$out_dir/spoke-$profile.efi" "$update/spoke_$version.efi" 2>/dev/null ||
    cp "$out_dir/spoke-$profile.efi" "$update/spoke_$version.efi"
echo "build.sh: compressing the root image for updates (gzip -1)"
gzip -1 --no-name --stdout "$out_dir/spoke-$profile.root-x86-64.raw" >"$update/spoke_$version.root.raw.gz"
rm "$out_dir/spoke-$profile.root-x86-64.raw"  # the disk image holds the same slot
t_gzip=$(date +%s)
printf '{"version": "%s", "architecture": "x86-64"}\n' "$version" >"$update/manifest.json"
(cd "$update" && sha256sum "spoke_$version.efi" "spoke_$version.root.raw.gz" >SHA256SUMS)
apparent=$(stat -c %s "$raw")
used=$(du -k "$raw" | cut -f1)
{
    echo "profile=$profile"
    echo "version=$version"
    echo "update_dir=$update"
    echo "build_seconds=$((t1 - t0))"
    echo "root_gzip_seconds=$((t_gzip - t1))"
    echo "wheelhouse_seconds=$((t_wheels - t0))"
    echo "image_bytes=$apparent"
    echo "image_used_kib=$used"
    echo "provisioning_key_sha256=$(sha256sum "$ctx/provisioning.pub" | cut -d' ' -f1)"
} >"$out_dir/spoke-$profile.build-info"
echo "build.sh: $raw ($((apparent / 1048576)) MiB, $((used / 1024)) MiB used) in $((t1 - t0)) s"
