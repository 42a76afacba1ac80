# Targets for humans and CI alike. `make test` is everything CI runs.
GO        ?= go
GOBIN     := $(shell $(GO) env GOPATH)/bin
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)
FUZZTIME  ?= 20s
VMRUN     := $(CURDIR)/integration/vm/vmrun.sh

.PHONY: all build test hosttest racetest vmtest lint fuzz bench demo deps clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/volfs ./cmd/volfs

deps:
	scripts/install-deps.sh

# Unit tests, fuzz seed corpora, host integration tests on loop devices and
# real FUSE mounts, the race detector, and the LVM suite in a QEMU guest.
test: deps lint hosttest racetest vmtest

hosttest:
	$(GO) test -count=1 ./...

# The race detector on the packages, and on the server the host
# integration suite drives (built with -race).
racetest:
	$(GO) test -count=1 -race ./fs/... ./meta/... ./volmap/... ./internal/uring/...
	VOLFS_TEST_RACE=1 $(GO) test -count=1 ./integration/

# Packages with tests that need device-mapper and LVM run inside a
# throw-away guest; on the host those tests skip. integration/lvm drives the
# volfs binary built here (building in the TCG guest would take minutes).
VMPKGS ?= ./volmap/lvm/ ./integration/vm/ ./integration/lvm/
vmtest: build
	$(GO) test -count=1 -p 1 -timeout 30m \
		-exec "$(VMRUN) -D 4G -e VOLFS_BIN=$(CURDIR)/bin/volfs --" $(VMPKGS)

lint:
	$(GO) mod tidy -diff
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "not gofmt'ed: $$out"; exit 1; fi
	$(GO) vet ./...
	$(GOBIN)/staticcheck ./...
	shellcheck scripts/*.sh integration/vm/*.sh .ci/run $(wildcard bench/*.sh)

# Each fuzz target for FUZZTIME (make test runs their seed corpora).
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzTags$$' -fuzztime $(FUZZTIME) ./meta/
	$(GO) test -run '^$$' -fuzz '^FuzzNames$$' -fuzztime $(FUZZTIME) ./volmap/
	$(GO) test -run '^$$' -fuzz '^FuzzReport$$' -fuzztime $(FUZZTIME) ./volmap/lvm/

bench: deps build
	bench/run.sh

demo: deps build
	scripts/demo.sh

clean:
	rm -rf bin
