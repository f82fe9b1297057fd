# cr: checkpoint, restore and migrate trees of Linux containers.
#
#   make demo    install what is missing (Go modules, CRIU >= 4.2) and show cr at work
#   make test    all tests: vet, a short fuzz run, unit tests, end-to-end tests against real CRIU (root)
#   make bench   speed, size and downtime, side by side with raw CRIU
#   make install the binary, man pages and bash/zsh/fish completions under
#                $(DESTDIR)$(PREFIX) (PREFIX=/usr/local); make uninstall
#   make fuzz    every Go fuzz target for FUZZTIME each (make test runs them for FUZZSHORT)

GO      ?= go
BIN     := bin/cr
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/cr-dev/cr/cmd.Version=$(VERSION)
FUZZTIME  ?= 60s
FUZZSHORT ?= 2s

PREFIX  ?= /usr/local
DESTDIR ?=
BINDIR  := $(PREFIX)/bin
MANDIR  := $(PREFIX)/share/man/man1
BASHDIR := $(PREFIX)/share/bash-completion/completions
ZSHDIR  := $(PREFIX)/share/zsh/site-functions
FISHDIR := $(PREFIX)/share/fish/vendor_completions.d

.PHONY: all build man completions install uninstall provision demo test unit e2e vet fuzz fuzz-short bench clean

all: build

# Static (CGO_ENABLED=0): the container init is cr itself, and inside a
# --rootfs container there is no host libc to load.
build:
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) .

# Man pages, one per command, from the same tree that prints --help.
man:
	rm -rf bin/man
	$(GO) run -ldflags "$(LDFLAGS)" ./tools/genman -o bin/man

completions: build
	mkdir -p bin/completions
	$(BIN) completion bash >bin/completions/cr
	$(BIN) completion zsh >bin/completions/_cr
	$(BIN) completion fish >bin/completions/cr.fish

install: build man completions
	install -D -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/cr
	install -d $(DESTDIR)$(MANDIR)
	install -m 0644 bin/man/*.1 $(DESTDIR)$(MANDIR)/
	install -D -m 0644 bin/completions/cr $(DESTDIR)$(BASHDIR)/cr
	install -D -m 0644 bin/completions/_cr $(DESTDIR)$(ZSHDIR)/_cr
	install -D -m 0644 bin/completions/cr.fish $(DESTDIR)$(FISHDIR)/cr.fish

# Removes what install put there (the man pages of this tree's commands).
uninstall: man
	rm -f $(DESTDIR)$(BINDIR)/cr $(DESTDIR)$(BASHDIR)/cr $(DESTDIR)$(ZSHDIR)/_cr $(DESTDIR)$(FISHDIR)/cr.fish
	cd bin/man && for f in *.1; do rm -f "$(DESTDIR)$(MANDIR)/$$f"; done

provision:
	bash scripts/provision.sh

demo: provision build
	bash scripts/demo.sh $(BIN)

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed:"; gofmt -l .; exit 1; }

test: provision vet fuzz-short
	$(GO) test -count=1 -timeout 40m ./...

# Each fuzz target of images, images/store, migrate and events, one after another
# (go test -fuzz takes one target per run); see scripts/fuzz.sh.
fuzz-short:
	GO=$(GO) bash scripts/fuzz.sh $(FUZZSHORT)

fuzz:
	GO=$(GO) bash scripts/fuzz.sh $(FUZZTIME)

unit:
	$(GO) test -count=1 $$($(GO) list ./... | grep -v /e2e)

e2e:
	$(GO) test -count=1 -timeout 40m -v ./e2e

bench: provision build
	$(GO) run ./bench -cr $(BIN) -out bench/out
	# Snapshot store: 10 snapshots of 1 GiB with 5% changed each time, < 2x one.
	$(GO) test -run '^$$' -bench TenSnapshots1GiB -benchtime 1x ./images/store

clean:
	rm -rf bin bench/out
