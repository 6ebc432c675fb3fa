# The single Watertight image: the proxy (`sidecar run`), the init step
# (`sidecar iptables`), the control plane and the injection webhook are one
# static binary, so every part of a pod runs the same version.
#
#   docker build -t ghcr.io/watertight/watertight:dev .
#
# Why not distroless or scratch for the final stage: the init container's
# `sidecar iptables` writes its rules with iptables-restore (atomically, with
# --noflush), and that program, with the xtables modules it loads, is not in
# distroless. So the base is Debian slim with only the iptables package; the
# Go binary itself is static (CGO_ENABLED=0) and needs nothing from it. The
# image runs as the proxy's UID 15337, non-root; only the init container runs
# as root, with NET_ADMIN and NET_RAW and nothing else (the webhook sets its
# securityContext). Clusters that run the control plane and webhook apart may
# build the `minimal` target (distroless, no shell, no iptables) for them:
#
#   docker build --target minimal -t ghcr.io/watertight/watertight-minimal:dev .

ARG GO_VERSION=1.26

FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" \
      -o /out/sidecar ./cmd/sidecar

FROM gcr.io/distroless/static-debian12:nonroot AS minimal
COPY --from=build /out/sidecar /usr/local/bin/sidecar
USER 15337:15337
ENTRYPOINT ["/usr/local/bin/sidecar"]

FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/sidecar /usr/local/bin/sidecar
USER 15337:15337
ENTRYPOINT ["/usr/local/bin/sidecar"]
