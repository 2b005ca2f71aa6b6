# aigov — identity-based governance for AI operations.
#
# Quick start:
#   make run    the demo stack on this machine (installs ClickHouse if missing)
#   make test   the whole test suite against real servers (what CI runs)
#
# PKG= narrows test and bench to some packages, e.g.
#   make test PKG=github.com/aigov/aigov/services/authn/...

SHELL := /bin/bash
PKG ?= github.com/aigov/aigov/...
GOFLAGS_TEST ?= -count=1 -shuffle=on -timeout=12m

.DEFAULT_GOAL := help

## help: list the targets
help:
	@sed -n 's/^## //p' $(MAKEFILE_LIST) | column -t -s ':'
.PHONY: help

## deps: install what a fresh Debian/Ubuntu machine lacks (ClickHouse)
deps:
	@bash scripts/install-deps.sh
.PHONY: deps

## build: compile the services and the aigov CLI into bin/
build:
	@mkdir -p bin
	@for s in authn policy audit reaper gateway aigov devstack; do go build -o bin/$$s ./services/$$s || exit 1; done
.PHONY: build

## run: start NATS, the dev OIDC provider, ClickHouse and the four services, play the demo, keep serving (ISSUERS=file trusts more issuers)
# Built, then exec'd rather than go run: go run exits 1 on Ctrl-C whatever
# the program returns, and make would report a clean stop as an error.
run: deps
	@mkdir -p .cache/bin && go build -o .cache/bin/devstack ./services/devstack
	@exec .cache/bin/devstack run $(if $(ISSUERS),-issuers '$(ISSUERS)')
.PHONY: run

## test: vet, then every test (unit, integration, end-to-end) against real servers
test: deps vet
	go test $(GOFLAGS_TEST) $(PKG)
	go run ./services/aigov policy test policies/tests
	$(MAKE) generate-check
	$(MAKE) test-chdb
	$(MAKE) fuzz
.PHONY: test

## test-quick: vet, then the tests without the end-to-end and outage ones (go test -short; -p 4: most packages wait on servers, not the CPU), in under a minute
test-quick: vet
	go test -count=1 -short -p 4 $(PKG)
.PHONY: test-quick

## test-chdb: the audit migrations, views and documented queries on the current ClickHouse engine (chdb, installed into .cache/chdb)
test-chdb:
	CHDB_LIB_PATH=$$(bash scripts/install-chdb.sh) go test -count=1 -tags chdb -run OnCurrentEngine ./services/audit/internal/migrate/
.PHONY: test-chdb

## fuzz: a brief run of the fuzz targets (FUZZTIME=20000x executions by default; a count,
## not a duration: Go 1.26's fuzzer can fail a clean run with "context deadline exceeded"
## when a duration ends on a busy machine, go.dev/issue/75804, fixed in Go 1.27)
fuzz:
	go test -run '^$$' -fuzz FuzzParseToken -fuzztime $${FUZZTIME:-20000x} ./services/authn/internal/verify/
.PHONY: fuzz

## test-race: the suite with the race detector (slower)
test-race: deps
	go test $(GOFLAGS_TEST) -race $(PKG)
.PHONY: test-race

## generate: rewrite what is generated from code (the settings reference from each service's declarations, the deny code table, NATS users, the policies ConfigMap and the other deploy files), then check it
generate:
	go run ./services/devstack generate
	$(MAKE) generate-check
.PHONY: generate

## generate-check: fail when a generated file differs from what the code generates (make test runs it; the deploy checks compare against the same renderers)
generate-check:
	go run ./services/devstack generate -check
.PHONY: generate-check

## vet: go vet and gofmt on every module
vet:
	go vet $(PKG)
	@out=$$(gofmt -l schemas services); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
.PHONY: vet

## bench: Go benchmarks of the hot paths, then the load generator through the whole stack (RELAY=1 OPA=1: ../shared/bench first, ratios in the same run)
bench: deps
	@PKG='$(PKG)' bash scripts/bench.sh
.PHONY: bench

## chaos: the stack on a 3-node NATS cluster under steady load, each fault injected in turn (kills, pauses, outages, poison, revocation, clock skew); fails on any lost, duplicated or wrongly allowed request (RATE=200)
chaos: deps
	go run ./services/devstack chaos -rate $${RATE:-200}
.PHONY: chaos

## test-erasure-r3: erase a subject key on a 3-node cluster and wait (up to 4 min) until its bytes are gone from every node's raft log too
test-erasure-r3:
	AIGOV_TEST_R3_COMPACTION=1 go test -count=1 -v -run TestSubjectKeyErasureR3 -timeout 10m ./services/devenv/natsdev/
.PHONY: test-erasure-r3

## images: build the container images with docker (deploy/Dockerfile); IMAGE_PREFIX=aigov IMAGE_TAG=dev by default
images:
	@prefix=$${IMAGE_PREFIX:-aigov}; tag=$${IMAGE_TAG:-dev}; \
	for s in authn policy audit reaper gateway aigov devstack; do \
		echo "== $$prefix/$$s:$$tag"; \
		docker build -f deploy/Dockerfile --target service --build-arg SERVICE=$$s -t $$prefix/$$s:$$tag . || exit 1; \
	done; \
	for t in demo mcpdemo; do \
		echo "== $$prefix/$$t:$$tag"; \
		docker build -f deploy/Dockerfile --target $$t -t $$prefix/$$t:$$tag . || exit 1; \
	done
.PHONY: images

## tidy: go mod tidy in every module
tidy:
	@for m in schemas services/*/; do (cd $$m && go mod tidy) || exit 1; done
.PHONY: tidy

## clean: remove build output and demo data
clean:
	rm -rf bin .run .run-bench .run-chaos .run-generate
.PHONY: clean
