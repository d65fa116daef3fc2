# syntax=docker/dockerfile:1
# extproc-gateway: a release build in the Rust image, run from a small Debian image
# as an unprivileged user. `docker build -t extproc-gateway .`
#
# The image's default is the binary's: ext_proc gRPC on 0.0.0.0:50051, admin on
# 127.0.0.1:9180. Set EXTPROC_ADMIN_ADDR=0.0.0.0:9180 to scrape /metrics from outside
# the container (docker-compose.yaml does). `echo-upstream --addr ...` runs the JSON
# echo upstream from the same image.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# build.rs compiles the protos with protox (pure Rust): no protoc needed.
# aws-lc-sys (jsonwebtoken's aws_lc_rs backend) compiles its C with the gcc that
# the rust image ships, through the cc crate: no cmake needed.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin extproc-gateway \
    && install -D -m 0755 target/release/extproc-gateway /out/extproc-gateway

FROM debian:bookworm-slim
# ca-certificates: jwt_auth's jwks_url and OTLP export over TLS use the system roots
# (left unpinned so security updates come with each rebuild).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 extproc \
    && useradd --system --uid 10001 --gid extproc --no-create-home --shell /usr/sbin/nologin extproc
COPY --from=build /out/extproc-gateway /usr/local/bin/extproc-gateway
USER 10001:10001
EXPOSE 50051 9180
ENTRYPOINT ["/usr/local/bin/extproc-gateway"]
CMD ["serve"]
