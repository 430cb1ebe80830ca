# Build stage: the release binary.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin cairn

# Runtime stage: the binary, the example models and the settings.
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /opt/cairn cairn \
 && mkdir -p /var/lib/cairn && chown cairn /var/lib/cairn
COPY --from=build /src/target/release/cairn /usr/local/bin/cairn
# The repository is written by publishes (trained versions, staged then renamed), so it
# belongs to the server's user.
COPY --chown=cairn models /opt/cairn/models
COPY configs /opt/cairn/configs
WORKDIR /opt/cairn
# Deployment state (pinned versions, candidates) and the prediction log (predictions,
# feedback, drift reports) survive restarts here.
ENV CAIRN_STATE_DIR=/var/lib/cairn
# [engine] kind = "ort" needs libonnxruntime.so.1 (e.g. from the onnxruntime wheel) and
# CAIRN_ONNXRUNTIME_LIBRARY naming it; without it those models fail to load, the rest serve.
VOLUME /var/lib/cairn
USER cairn
EXPOSE 8000 8001
STOPSIGNAL SIGTERM
ENTRYPOINT ["cairn"]
CMD ["serve"]
