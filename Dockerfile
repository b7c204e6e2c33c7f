# Two stages: build with the Rust toolchain, run on a slim Debian with only the binary.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY campaigns.example.toml ./
COPY examples ./examples
RUN cargo build --release --locked --bin tiercast

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tini curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home /var/lib/tiercast --create-home tiercast
COPY --from=build /src/target/release/tiercast /usr/local/bin/tiercast
COPY campaigns.example.toml /etc/tiercast/tiercast.toml
USER tiercast
WORKDIR /var/lib/tiercast
# MIMALLOC_ARENA_EAGER_COMMIT=0: the allocator commits memory as it is used; same speed,
# about half the peak RSS (BENCHMARKS.md).
ENV TIERCAST_CONFIG=/etc/tiercast/tiercast.toml \
    TIERCAST_DATABASE_URL=sqlite:///var/lib/tiercast/tiercast.db \
    MIMALLOC_ARENA_EAGER_COMMIT=0
VOLUME ["/var/lib/tiercast"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s \
  CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/tiercast"]
CMD ["serve", "--listen", "0.0.0.0:8080"]
