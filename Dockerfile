# hubgate: one static-ish binary on a slim base.
FROM rust:1.85-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The workspace's other member (the load tool): cargo reads every member's manifest.
COPY load ./load
COPY benches ./benches
COPY config ./config
RUN cargo build --release --locked --bin hubgate

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/hubgate /usr/local/bin/hubgate
USER nobody
EXPOSE 8000 8001
ENTRYPOINT ["/usr/local/bin/hubgate"]
