# syntax=docker/dockerfile:1
# The orderflow image docker-compose.yml runs: `orderflow run` (processors, sinks,
# edges) and `orderflow registry`. The broker is not in it (compose runs
# apache/kafka), so neither Java nor Maven is.

# ---- build ------------------------------------------------------------------------
FROM rust:1.95-bookworm AS build
# cmake builds the bundled librdkafka; pkg-config and libssl-dev for native-tls.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Cache mounts keep the crates and the target dir between builds (BuildKit); the
# binary is copied out because the target mount is gone after this step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p orderflow \
    && cp target/release/orderflow /usr/local/bin/orderflow

# ---- runtime ----------------------------------------------------------------------
FROM debian:bookworm-slim
# libssl3 and ca-certificates for TLS to a remote registry or gateway; curl for the
# compose healthchecks.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin orderflow
WORKDIR /app
COPY --from=build /usr/local/bin/orderflow /usr/local/bin/orderflow
# `orderflow run` reads ./topology.yaml (ORDERFLOW_TOPOLOGY to change it) and the
# .avsc files it names, relative to it.
COPY topology.yaml ./
COPY schemas ./schemas
USER orderflow
ENV ORDERFLOW_LOG=info
EXPOSE 8080 8081 9100
ENTRYPOINT ["orderflow"]
CMD ["run"]
