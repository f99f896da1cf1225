# hubgate: one binary on a slim base; a drop-in for the configurable-http-proxy image.
#   docker build -t hubgate .
# As z2jh's proxy.chp.image (docs/kubernetes.md): the chart runs `configurable-http-proxy`
# with CHP's flags, which is this image's `hubgate` under CHP's name. The process runs as
# 65534:65534 (the chart's default securityContext), writes nothing outside what it is
# told to write (no pid file unless --pid-file), so a read-only root file system works.
# The toolchain the lock file needs (some locked crates require Rust 1.95).
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The whole workspace (see .dockerignore): every member's manifest must be present for
# cargo to read the workspace, even though only the hubgate binary is built.
COPY . .
RUN cargo build --release --locked --bin hubgate \
    && install -D -m 0755 target/release/hubgate /out/hubgate

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/hubgate /usr/local/bin/hubgate
COPY docker/hubgate-healthcheck /usr/local/bin/hubgate-healthcheck
# CHP's name, for charts and scripts that start `configurable-http-proxy`.
RUN ln -s hubgate /usr/local/bin/configurable-http-proxy
# nobody:nogroup, numerically, so `runAsNonRoot` can verify it without /etc/passwd.
USER 65534:65534
EXPOSE 8000 8001
# For docker and compose; Kubernetes ignores HEALTHCHECK and uses the pod's probes on
# /_chp_healthz (z2jh sets them). Plain HTTP on HUBGATE_HEALTHCHECK_PORT (default 8000).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/hubgate-healthcheck"]
ENTRYPOINT ["/usr/local/bin/hubgate"]
