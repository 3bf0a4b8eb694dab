# gomux: build, test, lint, demo, bench. Run as root on Debian for the
# end-to-end parts (they create network namespaces and users).
GO       ?= go
VERSION  ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
# The GOARCHes of the agent builds: the first word of each line of
# target/arches that is not a comment (agent/dist and the launcher read it too).
ARCHES   := $(shell awk '$$1 !~ /^\#/ { print $$1 }' target/arches)
AGENTS   := $(foreach a,$(ARCHES),agent/dist/bin/gomux-agent-linux-$(a))
AGENT_SRC := $(shell find agent cmd/gomux-agent target \( -name '*.go' -not -name '*_test.go' \) -o -name '*.py' 2>/dev/null) target/arches go.mod go.sum
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2
# The fork server runs under the target's system Python: lint and compile
# it with Debian's (pyflakes3, /usr/bin/python3), not a developer's. The
# compile is py_compile's check without its write of a .pyc.
PYTHON   ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)
PYFLAKES ?= pyflakes3
PY_SRC   := agent/pyrun/forkserver.py
# The shell programs gomux runs on targets (target/*.sh) are templates:
# target/testdata/*.sh are them as written, filled with sample values
# (kept current by the target package's TestPrograms), for sh -n and
# Debian's shellcheck.
SH_PROGRAMS := $(wildcard target/testdata/*.sh)
SHELLCHECK ?= shellcheck
DEB_PACKAGES := openssh-server openssh-client ansible-core ansible-mitogen sudo acl iproute2 tmux lsof procps pyflakes3 asciinema haproxy prometheus shellcheck
# make image: an OCI image layout (and a tarball for docker/podman load)
# built by tools/image, its own module, without a container daemon.
IMAGE_DIR ?= bin/image
IMAGE_TAR ?= bin/gomux-image.tar
REVISION  ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)

# cmd/gomux's TestMakefilePhonyListsTargets keeps this list equal to the targets.
.PHONY: all build agents image deps test unit lint demo bench soak fuzz clean

all: build

# The agent is built first: gomux embeds it (go:embed in agent/dist).
agents: $(AGENTS)

agent/dist/bin/gomux-agent-linux-%: $(AGENT_SRC)
	CGO_ENABLED=0 GOOS=linux GOARCH=$* $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $@ ./cmd/gomux-agent

build: agents
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/gomux ./cmd/gomux

# The image: bin/gomux on an empty base, non-root, no shell; labelled
# with the version, the commit and its time (so the same commit gives the
# same image digest). Push with `crane push bin/image REPO:TAG`, or
# `docker load -i bin/gomux-image.tar`.
image: build
	cd tools/image && $(GO) run . -gomux $(abspath bin/gomux) -oci $(abspath $(IMAGE_DIR)) \
		-tar $(abspath $(IMAGE_TAR)) -version $(VERSION) -revision $(REVISION) -created $(SOURCE_DATE_EPOCH)

# Debian packages the tests, the demo and the benchmark need.
deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# Every test: vet, staticcheck, unit tests and end-to-end tests, with -race;
# then the image builder's module (its test runs make image).
test: agents lint
	$(GO) test -race -count=1 -timeout 40m ./...
	cd tools/image && $(GO) test -count=1 -timeout 10m ./...

# The fast path, no root needed: every test but the end-to-end ones, with -race.
unit: agents
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v /integration)

lint: agents
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...
	cd tools/image && $(GO) vet ./... && $(GO) run $(STATICCHECK) ./...
	$(PYFLAKES) $(PY_SRC)
	$(PYTHON) -c 'import sys; [compile(open(f, "rb").read(), f, "exec") for f in sys.argv[1:]]' $(PY_SRC)
	$(GO) test -count=1 -run '^TestPrograms$$' ./target
	for f in $(SH_PROGRAMS); do sh -n "$$f" || exit 1; done
	$(SHELLCHECK) $(SH_PROGRAMS)

# Each fuzz target for a while (FUZZTIME, 30s); `go test` alone runs
# their seed corpora. The targets are found in the test files, so one
# that moves with its package, or a new one, is never left out.
fuzz: agents
	@for f in $$(grep -rl --include='*_test.go' '^func Fuzz' agent cmd internal proxy shim target); do \
		for n in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' "$$f"); do \
			echo "== $$n ./$$(dirname $$f)"; \
			$(GO) test -run '^$$' -fuzz "^$$n\$$" -fuzztime $${FUZZTIME:-30s} ./$$(dirname $$f) || exit 1; \
		done; \
	done

# demo: three targets, the same work directly and through gomux.
demo: deps build
	GOMUX_DEMO=1 $(GO) test -count=1 -timeout 10m -run '^TestDemo$$' -v ./integration

# bench: in one run, the microbenchmarks (agent exec round trip, gomux's
# memory per idle upstream at 100 and 1,000 sessions), then every Ansible
# workload (seed playbook on 10 hosts at RTT 0 and 50 ms, on 30 hosts, as a
# bastion; the 40-task latency playbook; the file-heavy one) in every mode
# side by side (stock, stock_pipe, mitogen_linear, mitogen_free, gomux,
# gomux_pipe, gomux_cold, gomux_pipe_cold), and round trips per task for
# every mode measured from outside (BenchmarkRoundTrips). Tables are
# printed as they are done, written to bench-results/ (each headed with
# the day and commit measured; each workload's
# wall times also drawn as bench-results/<workload>.svg), and printed
# again together at the end. GOMUX_BENCH_REPS (default 3), GOMUX_BENCH_MODES and
# GOMUX_BENCH_WORKLOADS (comma-separated names) narrow it.
bench: deps build
	rm -rf bench-results && mkdir -p bench-results
	$(GO) test -count=1 -run '^$$' -bench . -benchmem ./agent
	$(GO) test -count=1 -run '^$$' -bench . -benchtime 1x ./proxy > bench-results/proxy.txt; \
		st=$$?; cat bench-results/proxy.txt; exit $$st
	$(GO) test -count=1 -timeout 600m -run '^$$' -bench . -benchtime 1x ./integration
	@echo; echo '== bench-results =='; cat bench-results/proxy.txt bench-results/*.md; ls bench-results/*.svg

# soak: the reliability and load runs that take minutes to hours, kept out
# of make test: the pipelined become playbook and the differential corpus
# (both pipelining modes, warm Python on and off) GOMUX_REPEAT_RUNS times each (30), the
# second differential corpus extra.yml (5 times by default), 200 targets
# with 50 forks, 1,000 concurrent ssh -J sessions, a pre-auth flood of
# 10,000 connections with real logins among it (TestAuditFlood), and a soak of repeated
# playbooks for GOMUX_SOAK_DURATION (30m) with gomux's RSS, goroutines
# and open files sampled each minute; the seed playbook through Debian's
# haproxy in front of two replicas with one drained mid-play
# (TestOpsHAProxyPlaybook), and a rolling upgrade from the last release,
# built from the git history, to the working tree (TestOpsUpgrade).
# Figures are in the -v output.
soak: deps build
	GOMUX_SOAK=1 $(GO) test -count=1 -timeout 60m -v -run '^(TestOpsHAProxyPlaybook|TestOpsUpgrade)$$' ./integration
	GOMUX_SOAK=1 GOMUX_REPEAT_RUNS=$${GOMUX_REPEAT_RUNS:-30} $(GO) test -count=1 -timeout 900m -v \
		-run '^(TestPipelinedBecomeRepeated|TestLoadManyTargets|TestLoadConcurrentSessions|TestSoak|TestDifferential)$$' ./integration
	GOMUX_FLOOD=10000 $(GO) test -count=1 -timeout 30m -v -run '^TestAuditFlood$$' ./integration
	GOMUX_SOAK=1 GOMUX_REPEAT_RUNS=$${GOMUX_REPEAT_RUNS:-30} GOMUX_DIFF_WARM=false $(GO) test -count=1 -timeout 900m -v \
		-run '^TestDifferential$$' ./integration
	GOMUX_SOAK=1 GOMUX_REPEAT_RUNS=$${GOMUX_REPEAT_RUNS:-5} GOMUX_DIFF_CORPUS=extra.yml $(GO) test -count=1 -timeout 900m -v \
		-run '^TestDifferential$$' ./integration
	GOMUX_SOAK=1 GOMUX_REPEAT_RUNS=$${GOMUX_REPEAT_RUNS:-5} GOMUX_DIFF_CORPUS=extra.yml GOMUX_DIFF_WARM=false $(GO) test -count=1 -timeout 900m -v \
		-run '^TestDifferential$$' ./integration

clean:
	rm -rf bin $(AGENTS)
