# Build stage: a release binary. Debian's glibc matches the runtime image.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p linnet \
 && strip target/release/linnet

# Runtime: distroless (glibc, CA certificates, no shell), as uid 2102, the
# uid that `linnet init` exempts from redirection.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/linnet /usr/bin/linnet
USER 2102:2102
EXPOSE 4140 4143 4191
ENTRYPOINT ["/usr/bin/linnet", "proxy"]
