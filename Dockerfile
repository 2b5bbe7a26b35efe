# syntax=docker/dockerfile:1
# The gateway's container image (not built by `make test`: there is no Docker
# engine on the development and CI machines; k8s/validate.sh lints this file):
#   docker build -t gateway:dev .
#   docker run --rm -p 8080:8080 -p 9901:9901 -v "$PWD/myconf:/etc/gateway:ro" gateway:dev
# with gateway.yaml and ocelot.json in myconf/ (see k8s/base/config). The image's
# own /etc/gateway is k8s/base/config, whose routes name in-cluster services;
# on Kubernetes the overlay's ConfigMap is mounted over it (README, "Deploying
# to Kubernetes").

# The Rust the project is tested with (override: --build-arg RUST_VERSION=...).
ARG RUST_VERSION=1.95

# --- build -------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS build
# cmake for Pingora's zlib-ng; a full perl for the vendored OpenSSL's Configure;
# patch and python3 for scripts/patch-pingora.sh.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends cmake perl patch python3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# BuildKit caches for the registry and target/ keep rebuilds incremental. The
# patched Pingora crates are made afresh in /src/.patched (.dockerignore keeps a
# local copy out of the context), which [patch.crates-io] in Cargo.toml names.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    bash scripts/patch-pingora.sh \
 && cargo build --release --locked -p gateway \
 && install -m 0755 target/release/gateway /usr/local/bin/gateway

# --- run ---------------------------------------------------------------------------
FROM debian:bookworm-slim
# CA certificates for https downstreams (OpenSSL is vendored into the binary,
# which finds /etc/ssl/certs).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin gateway
COPY --from=build /usr/local/bin/gateway /usr/local/bin/gateway
COPY k8s/base/config/ /etc/gateway/
ENV RUST_LOG=info
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
# 8080: proxy; 9901: admin (/healthz, /readyz, /metrics).
EXPOSE 8080 9901
# SIGTERM: stop being ready, drain, finish in-flight requests, exit.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/gateway"]
CMD ["--settings", "/etc/gateway/gateway.yaml"]
