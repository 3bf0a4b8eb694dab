# gomux appliance image, for people with Docker. It has the layout of the
# image `make image` builds without a daemon (the one the tests unpack and
# check): the static gomux binary (agents embedded) on an empty base, a
# numeric non-root user, the state directory owned by it, no shell.
# tools/image writes the file tree for both; TestDockerfileMatches keeps
# the config below equal to that image's.
#
# The build stage's base is pinned by digest (a tag can move under a
# build). That digest was not checked against its registry where this was
# written (no access): refresh it with `crane digest golang:1.26-bookworm`
# before building.
FROM golang:1.26-bookworm@sha256:9fdc884aacc3bec89b20ffc69f4bb369c78210e3e4f600387b5128b12c199f81 AS build
# go.mod names the exact Go release; an older 1.26 image fetches it.
ENV GOTOOLCHAIN=auto
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY tools/image/go.mod tools/image/go.sum tools/image/
RUN cd tools/image && go mod download
COPY . .
ARG VERSION=image
RUN make build VERSION=$VERSION
# The image's file tree, owners and modes included (as root here).
RUN cd tools/image && go run . -gomux /src/bin/gomux -rootfs /rootfs

FROM scratch
COPY --from=build /rootfs/ /
# The state directory's owner named again, so a fresh volume mounted
# there starts with the right owner and mode whatever COPY keeps.
COPY --from=build --chown=65532:65532 /rootfs/var/lib/gomux/ /var/lib/gomux/
ARG VERSION=image
ARG REVISION=unknown
LABEL org.opencontainers.image.source="https://github.com/gomux/gomux" \
      org.opencontainers.image.title="gomux" \
      org.opencontainers.image.description="Multiplexing SSH proxy and bastion for Ansible" \
      org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.revision="$REVISION"
USER 65532:65532
ENV XDG_STATE_HOME=/var/lib
VOLUME ["/var/lib/gomux"]
# 2222: SSH front; 9222: metrics, /healthz, /readyz (metrics_listen).
EXPOSE 2222 9222
WORKDIR /
ENTRYPOINT ["/usr/local/bin/gomux"]
CMD ["serve", "-config", "/etc/gomux/gomux.yaml", "-listen", "0.0.0.0:2222", "-state", "/var/lib/gomux"]
