# The freezeframe image: one static-ish binary on a distroless base, run as the CronJob in
# manifests/cronjob.yaml (`freezeframe run`) or a restore Job (manifests/restore-job.yaml).
#
#   docker build -t freezeframe:latest .
#   docker run --rm freezeframe:latest --help
#
# Build stage: release build with the lockfile; the cache mounts keep rebuilds incremental.
FROM docker.io/library/rust:1.95-slim-bookworm AS build
WORKDIR /src
# aws-lc-rs (TLS) and zstd build C code: cc and make come with the image; cmake/clang are not needed.
# The whole workspace is copied because Cargo resolves every member's manifest, but only the product crate
# is compiled: without the `demo` feature it depends on no sandbox code (tests/packaging.rs checks).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY crates ./crates
COPY benches ./benches
COPY tests ./tests
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p freezeframe --bin freezeframe \
    && install -D -m 0755 target/release/freezeframe /out/freezeframe

# Runtime: glibc, CA certificates and nothing else (no shell, no package manager). The nonroot user
# is numeric so `runAsNonRoot: true` can be verified by the kubelet.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/freezeframe /usr/local/bin/freezeframe
USER 65532:65532
# Logs as JSON lines by default in the image (FREEZEFRAME_LOG_FORMAT=text for humans).
ENV FREEZEFRAME_LOG_FORMAT=json
ENTRYPOINT ["/usr/local/bin/freezeframe"]
CMD ["run"]
