# Targets for humans and CI alike. `make test` is everything CI runs.
GO        ?= go
GOBIN     := $(shell $(GO) env GOPATH)/bin
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)
FUZZTIME  ?= 20s
VMRUN     := $(CURDIR)/integration/vm/vmrun.sh

.PHONY: all build test hosttest racetest vmtest faulttest soak multihost-test lint fuzz bench demo deps clean install uninstall

# Where `make install` puts things; DESTDIR is prepended to each.
# mount(8) looks for helpers in /sbin only, whatever the PREFIX.
PREFIX         ?= /usr/local
BINDIR         ?= $(PREFIX)/bin
SBINDIR        ?= /sbin
MANDIR         ?= $(PREFIX)/share/man
BASHCOMPDIR    ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR     ?= $(PREFIX)/share/zsh/site-functions
FISHCOMPDIR    ?= $(PREFIX)/share/fish/vendor_completions.d
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
SYSCONFDIR     ?= /etc
# Man pages dated by the last commit, so that they build reproducibly.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || date +%s)

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/volfs ./cmd/volfs

deps:
	scripts/install-deps.sh

# Unit tests, fuzz seed corpora, host integration tests on loop devices and
# real FUSE mounts, the race detector, the LVM suite in QEMU guests, and two
# guests on one shared VG (without the failover pair, which powers a guest
# off and waits out its lease: make multihost-test runs it).
test: deps lint hosttest racetest vmtest
	MULTIHOST_FAILOVER=0 $(MAKE) multihost-test

hosttest:
	$(GO) test -count=1 ./...

# The race detector on the packages, and on the server the host
# integration suite drives (built with -race).
racetest:
	$(GO) test -count=1 -race ./fs/... ./meta/... ./volmap/... ./internal/uring/...
	VOLFS_TEST_RACE=1 $(GO) test -count=1 ./integration/

# Packages with tests that need device-mapper and LVM run inside throw-away
# guests, several at once (scripts/vmtest.sh); on the host those tests skip.
# integration/lvm drives the volfs binary built here (building in the TCG
# guest would take minutes). VMRUNARGS=-run REGEXP runs some tests only.
vmtest: build
	VOLFS_BIN=$(CURDIR)/bin/volfs GO=$(GO) scripts/vmtest.sh $(VMRUNARGS)

# The fault campaign (README "Reliability"), longer than in vmtest: failing,
# full and slow devices under real LVM, and FAULT_ITER rounds of SIGKILL
# of the server during writes, create, rename, truncate, snapshot and clone
# (make vmtest runs the same tests with 2 rounds). Then the power loss:
# run on the host, TestFaultPowerLoss boots a guest twice over one disk
# image (writes, sysrq reset; then mount and check).
FAULT_ITER ?= 20
faulttest: build
	$(GO) test -count=1 -p 1 -timeout 120m -v -run 'TestFault' \
		-exec "$(VMRUN) -t 7000 -D 4G -e VOLFS_BIN=$(CURDIR)/bin/volfs -e VOLFS_FAULT_ITER=$(FAULT_ITER) --" \
		./integration/lvm/
	VOLFS_BIN=$(CURDIR)/bin/volfs VOLFS_POWERLOSS=run $(GO) test -count=1 -timeout 40m -v \
		-run '^TestFaultPowerLoss$$' ./integration/lvm/

# The load test (README "Reliability", "Load"), longer than in vmtest:
# fio --verify, copies and metadata loops at once on one mount of linear
# and thin files for DURATION (Go syntax; make vmtest runs 2m), the
# server's RSS, fds, threads and goroutines sampled and printed.
DURATION ?= 10m
soak: build
	$(GO) test -count=1 -p 1 -timeout 300m -v -run 'TestSoak' \
		-exec "$(VMRUN) -t 18300 -D 4G -e VOLFS_BIN=$(CURDIR)/bin/volfs -e VOLFS_SOAK_DURATION=$(DURATION) --" \
		./integration/lvm/

# Several hosts on one shared VG (lvmlockd + sanlock): two guests at once
# sharing one disk (scripts/multihost-test.sh), then a second pair for the
# failover test (MULTIHOST_FAILOVER=0 skips it; make test does).
# VMRUNARGS=-run REGEXP runs some tests only.
multihost-test: build
	VOLFS_BIN=$(CURDIR)/bin/volfs GO=$(GO) scripts/multihost-test.sh $(VMRUNARGS)

lint:
	$(GO) mod tidy -diff
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "not gofmt'ed: $$out"; exit 1; fi
	$(GO) vet ./...
	$(GOBIN)/staticcheck ./...
	shellcheck scripts/*.sh integration/vm/*.sh .ci/run $(wildcard bench/*.sh)

# Each fuzz target for FUZZTIME (make test runs their seed corpora, the
# f.Add seeds and testdata/fuzz/FuzzXxx/, where a crasher found is kept).
FUZZ_TARGETS := FuzzTags@meta \
	FuzzStore@meta \
	FuzzNames@volmap \
	FuzzParseLayout@volmap \
	FuzzReport@volmap/lvm \
	FuzzStamp@volmap/lvm \
	FuzzIntents@volmap/lvm \
	FuzzSnapTags@volmap/lvm \
	FuzzThinDump@volmap/lvm \
	FuzzTables@volmap/lvm \
	FuzzRequest@internal/control \
	FuzzResponse@internal/control \
	FuzzParse@internal/mountinfo \
	FuzzParse@internal/proc \
	FuzzStat@internal/proc \
	FuzzParsePath@snapshot
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		echo "== $${t%%@*} in ./$${t#*@}/"; \
		$(GO) test -run '^$$' -fuzz "^$${t%%@*}\$$" -fuzztime $(FUZZTIME) ./$${t#*@}/; \
	done

bench: deps build
	bench/run.sh

demo: deps build
	scripts/demo.sh

# The binary, the helpers of mount(8) and umount(8) (symlinks: volfs acts
# as the helper when called mount.fuse.volfs or umount.fuse.volfs), man
# pages and shell completion generated from the commands, the systemd unit,
# and a logrotate rule.
install: build
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(SBINDIR) $(DESTDIR)$(MANDIR) \
		$(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(ZSHCOMPDIR) $(DESTDIR)$(FISHCOMPDIR) \
		$(DESTDIR)$(SYSTEMDUNITDIR) $(DESTDIR)$(SYSCONFDIR)/logrotate.d $(DESTDIR)$(SYSCONFDIR)/volfs
	install -m 0755 bin/volfs $(DESTDIR)$(BINDIR)/volfs
	ln -sf $(BINDIR)/volfs $(DESTDIR)$(SBINDIR)/mount.fuse.volfs
	ln -sf $(BINDIR)/volfs $(DESTDIR)$(SBINDIR)/umount.fuse.volfs
	SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) bin/volfs gendocs $(DESTDIR)$(MANDIR)
	bin/volfs completion bash > $(DESTDIR)$(BASHCOMPDIR)/volfs
	bin/volfs completion zsh > $(DESTDIR)$(ZSHCOMPDIR)/_volfs
	bin/volfs completion fish > $(DESTDIR)$(FISHCOMPDIR)/volfs.fish
	sed 's|@BINDIR@|$(BINDIR)|g' contrib/systemd/volfs@.service.in > $(DESTDIR)$(SYSTEMDUNITDIR)/volfs@.service
	chmod 0644 $(DESTDIR)$(SYSTEMDUNITDIR)/volfs@.service
	install -m 0644 contrib/logrotate/volfs $(DESTDIR)$(SYSCONFDIR)/logrotate.d/volfs

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/volfs $(DESTDIR)$(SBINDIR)/mount.fuse.volfs $(DESTDIR)$(SBINDIR)/umount.fuse.volfs \
		$(DESTDIR)$(MANDIR)/man1/volfs.1 $(DESTDIR)$(MANDIR)/man1/volfs-*.1 \
		$(DESTDIR)$(MANDIR)/man8/mount.fuse.volfs.8 $(DESTDIR)$(MANDIR)/man8/umount.fuse.volfs.8 \
		$(DESTDIR)$(BASHCOMPDIR)/volfs $(DESTDIR)$(ZSHCOMPDIR)/_volfs $(DESTDIR)$(FISHCOMPDIR)/volfs.fish \
		$(DESTDIR)$(SYSTEMDUNITDIR)/volfs@.service $(DESTDIR)$(SYSCONFDIR)/logrotate.d/volfs

clean:
	rm -rf bin
