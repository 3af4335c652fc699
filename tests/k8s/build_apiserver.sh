#!/bin/sh
# Builds kube-apiserver, kube-controller-manager and kube-scheduler v1.20.2 from Debian bookworm's
# source package into a cache outside the repository, for the tests in tests/k8s/.
# Idempotent: does nothing when the three binaries exist. Needs root (apt) the first time.
#   MAHAVISHNU_KUBE_CACHE  cache folder (default ~/.cache/mahavishnu/kube)
set -eu

CACHE="${MAHAVISHNU_KUBE_CACHE:-$HOME/.cache/mahavishnu/kube}"
VERSION="1.20.5+really1.20.2-1.1+deb12u1"
BIN="$CACHE/bin"
TOOLS="kube-apiserver kube-controller-manager kube-scheduler"

have_all() {
	for t in $TOOLS; do [ -x "$BIN/$t" ] || return 1; done
	command -v etcd >/dev/null 2>&1
}
if have_all; then
	exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# A deb-src entry for bookworm (deb822 format, as /etc/apt/sources.list.d/debian.sources uses).
SRC=/etc/apt/sources.list.d/mahavishnu-deb-src.sources
if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
	$SUDO sh -c "cat > $SRC" <<'SOURCES'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
	$SUDO apt-get update
fi
NEED=""
for p in dpkg-dev golang-go etcd-server golang-github-modern-go-reflect2-dev; do
	dpkg -s "$p" >/dev/null 2>&1 || NEED="$NEED $p"
done
if [ -n "$NEED" ]; then
	$SUDO apt-get -o DPkg::Lock::Timeout=900 install -y --no-install-recommends $NEED
fi

mkdir -p "$CACHE"
cd "$CACHE"
TREE="$CACHE/kubernetes-1.20.5+really1.20.2"
if [ ! -d "$TREE" ]; then
	apt-get source --download-only "kubernetes=$VERSION"
	dpkg-source -x --no-check kubernetes_"$VERSION".dsc "$TREE"
fi
cd "$TREE"

# The vendored reflect2 1.0.1 crashes under Go >= 1.18 (first custom-resource create): use 1.0.2.
R2=vendor/github.com/modern-go/reflect2
R2DEB=/usr/share/gocode/src/github.com/modern-go/reflect2
if ! cmp -s "$R2DEB/reflect2.go" "$R2/reflect2.go"; then
	rm -f "$R2"/*.go "$R2"/*.s
	for f in "$R2DEB"/*.go "$R2DEB"/*.s; do
		[ -e "$f" ] || continue
		case "$f" in *_test.go) continue ;; esac
		cp "$f" "$R2/"
	done
	sed -i 's|^# github.com/modern-go/reflect2 v1.0.1|# github.com/modern-go/reflect2 v1.0.2|' vendor/modules.txt
	sed -i 's|github.com/modern-go/reflect2 v1.0.1|github.com/modern-go/reflect2 v1.0.2|' go.mod
fi

GOPROXY=off GOFLAGS=-mod=vendor CGO_ENABLED=0 make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler"
mkdir -p "$BIN"
for t in $TOOLS; do
	cp "_output/bin/$t" "$BIN/$t.new" && mv "$BIN/$t.new" "$BIN/$t"
done
have_all
