# syntax=docker/dockerfile:1
# The imdsguard image: one binary, /usr/local/bin/imdsguard (the ENTRYPOINT), with the
# tools the node agent runs: nft (nftables), conntrack and ip (iproute2).
#
#   docker build -t ghcr.io/imdsguard/imdsguard:0.1.0 .
#
# The tag is the workspace version, which is the Helm chart's appVersion and so its
# default image (charts/imdsguard, deploy/imdsguard.yaml). The image runs as uid 65532;
# the agent's DaemonSet runs it as uid 0 with NET_ADMIN alone (docs/deploy.md), the
# controller and the probe keep 65532.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=trixie

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
WORKDIR /src
# What the build reads: the workspace manifests and lock file, the crates, and the
# presets the core embeds (include_str!). .dockerignore keeps everything else out.
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
COPY presets ./presets
# The registry and target folders are cache mounts (kept between builds, never in a
# layer); the binary is copied out of them.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p imdsguard \
    && install -D -m 0755 target/release/imdsguard /out/imdsguard

FROM debian:${DEBIAN_RELEASE}-slim
# nftables: the agent's table (nft -j -f -); conntrack: flushing connections toward the
# endpoints when the table changes; iproute2: `ip -j route get` for a pod's interface.
# ca-certificates: the API server's and clouds' TLS where the in-cluster CA is not used.
RUN apt-get update \
    && apt-get install -y --no-install-recommends nftables conntrack iproute2 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=builder /out/imdsguard /usr/local/bin/imdsguard
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/imdsguard"]
CMD ["--help"]
