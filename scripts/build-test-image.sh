#!/bin/sh
# Build the test image maculad-test/busybox:latest from Debian's busybox-static.
#
# No image can be pulled on the machines maculad is built and tested on, so the
# tests' containers run this one: a root file system holding the static
# /bin/busybox with a link for every applet (sh, httpd, wget, nc, sleep, cat,
# echo, test, kill, touch, rm, ...), imported with `docker import`.
#
# Idempotent: when the image exists and was built from the same busybox binary
# (its sha256 is kept in the image's environment), nothing is done.
# Usage: scripts/build-test-image.sh [--force] [IMAGE]
set -eu

FORCE=0
if [ "${1:-}" = "--force" ]; then FORCE=1; shift; fi
IMAGE="${1:-maculad-test/busybox:latest}"
BUSYBOX="${BUSYBOX:-/bin/busybox}"

if [ ! -x "$BUSYBOX" ]; then
    echo "build-test-image: $BUSYBOX not found (apt-get install -y busybox-static)" >&2
    exit 1
fi
if ldd "$BUSYBOX" >/dev/null 2>&1; then
    echo "build-test-image: $BUSYBOX is dynamically linked; install busybox-static" >&2
    exit 1
fi
SUM="$(sha256sum "$BUSYBOX" | cut -d' ' -f1)"

if [ "$FORCE" = 0 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    if docker image inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE" \
        | grep -qx "BUSYBOX_SHA256=$SUM"; then
        echo "build-test-image: $IMAGE is up to date"
        exit 0
    fi
fi

ROOT="$(mktemp -d)"
trap 'rm -rf "$ROOT"' EXIT INT TERM
mkdir -p "$ROOT/bin" "$ROOT/sbin" "$ROOT/usr/bin" "$ROOT/etc" "$ROOT/tmp" "$ROOT/www" \
    "$ROOT/proc" "$ROOT/sys" "$ROOT/dev" "$ROOT/root" "$ROOT/var/run"
chmod 1777 "$ROOT/tmp"
cp "$BUSYBOX" "$ROOT/bin/busybox"
for applet in $("$BUSYBOX" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$ROOT/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$ROOT/etc/group"
printf 'maculad test image\n' >"$ROOT/www/index.html"

tar -C "$ROOT" -c . | docker import \
    --change 'ENV PATH=/bin:/sbin:/usr/bin' \
    --change "ENV BUSYBOX_SHA256=$SUM" \
    --change 'WORKDIR /' \
    --change 'CMD ["sh"]' \
    - "$IMAGE" >/dev/null
echo "build-test-image: built $IMAGE"
