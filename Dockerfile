# gomux appliance image: a static binary, non-root, read-only friendly.
#
# Base images are pinned by digest (a tag can move under a build). To
# refresh: crane digest golang:1.26-bookworm, crane digest
# gcr.io/distroless/static-debian12:nonroot.
FROM golang:1.26-bookworm@sha256:9fdc884aacc3bec89b20ffc69f4bb369c78210e3e4f600387b5128b12c199f81 AS build
# go.mod names the exact Go release; an older 1.26 image fetches it.
ENV GOTOOLCHAIN=auto
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=image
RUN make build VERSION=$VERSION
# The state directory, owned by the image's non-root user (65532), so a
# fresh volume mounted there starts with the right owner and mode.
RUN install -d -m 0700 -o 65532 -g 65532 /out/var/lib/gomux

FROM gcr.io/distroless/static-debian12:nonroot@sha256:afa5c872c891853ca7fcf1f12c3edb23f7eeef36189728842dd51042ff57f7ab
COPY --from=build /src/bin/gomux /usr/local/bin/gomux
COPY --from=build --chown=65532:65532 /out/var/lib/gomux /var/lib/gomux
USER 65532:65532
ENV XDG_STATE_HOME=/var/lib
VOLUME ["/var/lib/gomux"]
# 2222: SSH front; 9222: metrics, /healthz, /readyz (metrics_listen).
EXPOSE 2222 9222
ENTRYPOINT ["/usr/local/bin/gomux"]
CMD ["serve", "-config", "/etc/gomux/gomux.yaml", "-listen", "0.0.0.0:2222", "-state", "/var/lib/gomux"]
