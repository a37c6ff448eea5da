# vigil image for the docker-compose lab: the sidecar runs next to its
# database in one container (it starts, stops, promotes and rewinds it), so
# the runtime image holds vigil plus PostgreSQL 15 and MariaDB 10.11 from
# Debian 12. Multi-stage: the Rust toolchain stays in the build stage.
# Non-root: PostgreSQL nodes run as `postgres`, MariaDB nodes as `mysql`
# (docker-compose.yml sets `user:`).

FROM rust:1.89-bookworm AS build
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends protobuf-compiler libprotobuf-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY sql sql
COPY bench bench
RUN cargo build --release --locked --bin vigil

FROM debian:bookworm-slim AS runtime
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends postgresql-15 mariadb-server mariadb-client ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/vigil /run/vigil \
 && chmod 1777 /var/lib/vigil /run/vigil
COPY --from=build /src/target/release/vigil /usr/local/bin/vigil
COPY contrib/compose/entrypoint.sh /usr/local/bin/vigil-entrypoint
COPY sql/mysql/heartbeat.sql /usr/share/vigil/heartbeat.sql
ENV PATH="/usr/lib/postgresql/15/bin:${PATH}"
USER postgres
EXPOSE 5432 3306 8008
ENTRYPOINT ["/usr/local/bin/vigil-entrypoint"]
