# gomux appliance image: static binary, non-root, state in a volume.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN make build VERSION=$(git describe --always --dirty 2>/dev/null || echo image)

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/bin/gomux /usr/local/bin/gomux
USER nonroot:nonroot
ENV XDG_STATE_HOME=/var/lib
VOLUME ["/var/lib/gomux"]
EXPOSE 2222
ENTRYPOINT ["/usr/local/bin/gomux"]
CMD ["serve", "-config", "/etc/gomux/gomux.yaml", "-listen", "0.0.0.0:2222", "-state", "/var/lib/gomux"]
