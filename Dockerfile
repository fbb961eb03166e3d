# syntax=docker/dockerfile:1
#
# The synapse-gate container image: a release build on the Rust image, then only the binary on a
# distroless base (glibc, CA roots, a `nonroot` user; no shell, no package manager, no `sleep`).
#
#   docker build -t synapse-gate:0.1.0 .
#
# The Helm chart in charts/synapse-gate runs it as user 65532 with a read-only root filesystem;
# its configuration arrives as ConfigMaps mounted under /etc/synapse-gate (see the chart's README).

# The same Rust release the project is built and tested with, on the Debian release of the
# runtime image below (bookworm = Debian 12), so the binary links against the glibc it runs on.
ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the crate downloads and the target directory between builds; the binary is
# copied out of the cache because a cache mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin synapse-gate \
    && install -D -m 0755 target/release/synapse-gate /out/synapse-gate

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/synapse-gate /usr/local/bin/synapse-gate
# Where the chart mounts gate.yaml; JSON logs whatever the terminal situation. glibc keeps up to
# 128 freed blocks per size for reuse instead of 7: the audit writer frees a whole batch of event
# buffers at once, and glibc's slower general path cost the gate 6 to 8 % of its requests per
# second (bench/README.md). bench/run and bench/instructions run the gate with this same value.
ENV SYNAPSE_GATE_CONFIG=/etc/synapse-gate/config/gate.yaml \
    SYNAPSE_GATE_LOG_FORMAT=json \
    GLIBC_TUNABLES=glibc.malloc.tcache_count=128
# distroless's `nonroot` user, by number so `runAsNonRoot` can verify it without reading /etc/passwd.
USER 65532:65532
# Client listener (TLS) and admin listener (/healthz, /readyz, /metrics), as in the chart.
EXPOSE 8443 9090
ENTRYPOINT ["/usr/local/bin/synapse-gate"]
CMD ["serve"]
