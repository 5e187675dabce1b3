# Build stage: a release binary. Debian's glibc matches the runtime images.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p linnet \
 && strip target/release/linnet

# The init container (`docker build --target init`): `linnet init` needs
# iptables, and NET_ADMIN at run time. It runs as root, once, before the
# proxy starts.
FROM debian:bookworm-slim AS init
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/linnet /usr/bin/linnet
ENTRYPOINT ["/usr/bin/linnet", "init"]

# The proxy (the default target): distroless (glibc, CA certificates, no
# shell), as uid 2102, the uid that `linnet init` exempts from redirection.
FROM gcr.io/distroless/cc-debian12:nonroot AS proxy
COPY --from=build /src/target/release/linnet /usr/bin/linnet
USER 2102:2102
EXPOSE 4140 4143 4191
ENTRYPOINT ["/usr/bin/linnet", "proxy"]
