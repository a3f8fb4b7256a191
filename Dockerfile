# NOTE: no Docker engine runs on the dev/CI machines, so this file is linted (scripts/lint-dockerfile.sh, hadolint) but never built there.
#
# Build:  docker build -t sever .
# Run:    docker run -p 8080:8080 sever
# Build inputs (see .dockerignore): Cargo.toml, Cargo.lock, src/, migrations/, config/, and
# tests/kit/ (a workspace member and dev-dependency: cargo reads its manifest to resolve).

# ---- build stage -----------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /app
# No DATABASE_URL at build time: compile-time-checked queries would need .sqlx/ offline data.
ENV SQLX_OFFLINE=true \
    CARGO_TERM_COLOR=never

# Dependency cache layer: build the dependency graph against a dummy crate so that
# source-only changes do not recompile every dependency.
COPY Cargo.toml Cargo.lock ./
COPY tests/kit ./tests/kit
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

# The real sources. sqlx::migrate! embeds migrations/ at compile time. Touch the
# crate roots so cargo rebuilds the crate instead of reusing the dummy artifacts.
COPY src ./src
COPY migrations ./migrations
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked

# ---- runtime stage ---------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates for TLS to databases and webhooks; curl only for HEALTHCHECK.
# Not version-pinned: take bookworm's current (security-patched) packages at build time.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 sever \
    && useradd --system --no-log-init --uid 10001 --gid 10001 \
        --home-dir /var/lib/sever --no-create-home --shell /usr/sbin/nologin sever \
    && install -d -o sever -g sever -m 0750 /var/lib/sever

COPY --from=build /app/target/release/sever /usr/local/bin/sever
# Optional configuration; sever runs on built-in defaults without it.
COPY config/ /etc/sever/

# The default SQLite store (sever.db) is created in the working directory.
WORKDIR /var/lib/sever
USER 10001:10001

EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/healthz"]

ENTRYPOINT ["/usr/local/bin/sever"]
CMD ["serve", "--listen", "0.0.0.0:8080"]
