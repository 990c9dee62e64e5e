#!/usr/bin/env bash
# Builds the Spoke appliance disk image with mkosi: one command per flavour.
#
#   image/build.sh [--profile cpu|nvidia] (--hub-home DIR | --trust-key FILE) [--output-dir DIR]
#                  [--without-extras]
#
# --without-extras leaves the flavour's Python extra out (the OS part of the flavour is still
# built): to check e.g. the nvidia driver layer on a host that cannot fetch TensorRT's wheels.
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

while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile="$2"; shift 2 ;;
        --hub-home) hub_home="$2"; shift 2 ;;
        --trust-key) trust_key="$2"; shift 2 ;;
        --output-dir) out_dir="$2"; shift 2 ;;
        --without-extras) without_extras=1; shift ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$profile" in
    cpu) extras="" ;;
    nvidia) extras="gpu" ;;
    *) echo "build.sh: unknown profile '$profile' (cpu or nvidia)" >&2; exit 2 ;;
esac
[ "$without_extras" -eq 0 ] || extras=""
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

# mkosi's apt and dpkg output is long: it goes to a log, printed only when the build fails.
mkosi_log="$out_dir/spoke-$profile.mkosi.log"
echo "build.sh: mkosi build ($profile), log in $mkosi_log"
mkosi --directory "$here/mkosi" \
      --profile "$profile" \
      --output "spoke-$profile" \
      --output-dir "$out_dir" \
      --build-sources "$ctx:" \
      --environment "SPOKE_EXTRAS=$extras" \
      --force \
      build >"$mkosi_log" 2>&1 || {
    echo "build.sh: mkosi failed; the last 200 lines of $mkosi_log:" >&2
    tail -n 200 "$mkosi_log" >&2
    exit 1
}
t1=$(date +%s)

raw="$out_dir/spoke-$profile.raw"
apparent=$(stat -c %s "$raw")
used=$(du -k "$raw" | cut -f1)
{
    echo "profile=$profile"
    echo "build_seconds=$((t1 - t0))"
    echo "wheelhouse_seconds=$((t_wheels - t0))"
    echo "image_bytes=$apparent"
    echo "image_used_kib=$used"
    echo "provisioning_key_sha256=$(sha256sum "$ctx/provisioning.pub" | cut -d' ' -f1)"
} >"$out_dir/spoke-$profile.build-info"
echo "build.sh: $raw ($((apparent / 1048576)) MiB, $((used / 1024)) MiB used) in $((t1 - t0)) s"
