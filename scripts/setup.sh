#!/usr/bin/env bash
# Installs what mesh needs on a fresh Debian 12 machine. Idempotent: each step
# checks first and does nothing when its part is already there.
set -euo pipefail

say() { printf '\033[1msetup:\033[0m %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
    say "must run as root (installs Debian packages, loads eBPF programs); try: sudo $0"
    exit 1
fi

# Debian packages: LLVM 22 for bpf-linker, load tools for benchmarks and tests,
# tcpdump to prove the wire carries TLS, protoc for the gRPC/xDS schemas, nghttpd as
# an HTTP/2 (h2c) application.
PKGS=(llvm-22-dev libpolly-22-dev iproute2 iperf3 nghttp2-client nghttp2-server curl openssl tcpdump protobuf-compiler
      libprotobuf-dev pkg-config libssl-dev netcat-openbsd)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages (${missing[*]}); about 30-60 s"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The eBPF crate is compiled by the pinned nightly (LLVM 22, same as bpf-linker's).
EBPF_TOOLCHAIN=nightly-2026-05-20
if ! rustup run nightly rustc --version 2>/dev/null | grep -q '2026-05-1[89]\|2026-05-20'; then
    if ! rustup toolchain list | grep -q "^$EBPF_TOOLCHAIN"; then
        say "installing Rust toolchain $EBPF_TOOLCHAIN for the eBPF crate; about 60 s"
        rustup toolchain install "$EBPF_TOOLCHAIN" --profile minimal --component rust-src
    fi
fi
for tc in nightly 1.95.0; do
    if rustup toolchain list | grep -q "^$tc"; then
        if ! rustup component list --toolchain "$tc" --installed 2>/dev/null | grep -q '^rust-src'; then
            say "adding rust-src to toolchain $tc (build-std for the bpf target); about 20 s"
            rustup component add rust-src --toolchain "$tc"
        fi
    fi
done

# bpf-linker must link against the same LLVM major as the eBPF rustc (22).
if ! command -v bpf-linker >/dev/null || ! bpf-linker --version 2>/dev/null | grep -q '0.13.0'; then
    say "building bpf-linker 0.13.0 against LLVM 22; about 3-4 minutes on 2 cores"
    LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker@0.13.0 --locked \
        --no-default-features --features llvm-22
fi

# bpffs for pinned maps and links.
if ! mountpoint -q /sys/fs/bpf; then
    say "mounting bpffs at /sys/fs/bpf"
    mount -t bpf bpf /sys/fs/bpf
fi
say "prerequisites present"
