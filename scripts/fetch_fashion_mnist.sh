#!/usr/bin/env bash
# Fashion-MNIST comes from Debian's dataset-fashion-mnist package (MIT licence). Installed system-wide
# it is used in place; otherwise the .deb is downloaded (no root needed) and unpacked under data/.
set -euo pipefail
cd "$(dirname "$0")/.."
for dir in "${FASHION_MNIST_DIR:-}" /usr/share/datasets/fashion-mnist data/fashion-mnist/usr/share/datasets/fashion-mnist; do
  if [ -n "$dir" ] && [ -f "$dir/t10k-images-idx3-ubyte.gz" ]; then echo "Fashion-MNIST: $dir"; exit 0; fi
done
command -v apt-get >/dev/null || { echo "Fashion-MNIST missing: install Debian's dataset-fashion-mnist or set FASHION_MNIST_DIR" >&2; exit 1; }
mkdir -p data/fashion-mnist
(cd data && apt-get download dataset-fashion-mnist) || {
  echo "apt-get download failed; run 'apt-get update' (as root) or 'apt-get install dataset-fashion-mnist'" >&2; exit 1; }
dpkg-deb -x data/dataset-fashion-mnist_*.deb data/fashion-mnist
rm -f data/dataset-fashion-mnist_*.deb
echo "Fashion-MNIST: data/fashion-mnist/usr/share/datasets/fashion-mnist"
