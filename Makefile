# cr: checkpoint, restore and migrate trees of Linux containers.
#
#   make demo    install what is missing (Go modules, CRIU >= 4.2) and show cr at work
#   make test    all tests: vet, unit tests, end-to-end tests against real CRIU (root)
#   make bench   speed, size and downtime, side by side with raw CRIU

GO      ?= go
BIN     := bin/cr
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/cr-dev/cr/cmd.Version=$(VERSION)

.PHONY: all build provision demo test unit e2e vet bench clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) .

provision:
	bash scripts/provision.sh

demo: provision build
	bash scripts/demo.sh $(BIN)

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed:"; gofmt -l .; exit 1; }

test: provision vet
	$(GO) test -count=1 -timeout 40m ./...

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
