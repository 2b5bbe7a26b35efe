# Developer and CI entry points. CI runs `make test` and `make lint` (see .ci/run).
#
#   make test    install missing system packages, build the gateway, run every test (the Pingora patches' own too)
#   make run     demo: echo upstreams on :5001/:5002 behind the gateway on :8080
#   make build   build the workspace binaries (dev profile)
#   make lint    rustfmt check, clippy with warnings as errors, no import cycles between top-level modules
#   make deps    system packages and the patched Pingora crates in .patched/ (patches/README.md)
#   make bench   release build, then the gateway against nginx, HAProxy and bare Pingora

SHELL := /bin/bash
CARGO ?= cargo
# apt-get needs root; use sudo only when we are not root already.
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

RUN_LISTEN ?= 127.0.0.1:8080
RUN_ADMIN ?= 127.0.0.1:9901
DEMO_UPSTREAMS ?= 127.0.0.1:5001 127.0.0.1:5002
RUN_OCELOT ?= conf/ocelot.json
# Binaries land here unless CARGO_TARGET_DIR moves them.
BIN_DIR := $(or $(CARGO_TARGET_DIR),target)/debug

.PHONY: help deps build test run lint lint-tools bench

help:
	@sed -n '3,9p' Makefile | sed 's/^# *//'

# System packages a fresh Debian with only Rust lacks: cmake (zlib-ng in
# Pingora), a C/C++ toolchain and a full perl (vendored OpenSSL's Configure
# needs IPC::Cmd and FindBin, which perl-base alone does not have), and
# redis-server, redis-sentinel and redis-tools' redis-cli (the shared
# rate-limiting tests start their own servers, sentinels and clusters),
# dnsmasq (the DNS service-discovery tests run one on a loopback port),
# chromium and chromium-driver (tests/tests/swagger.rs drives Swagger UI in
# headless Chromium through WebDriver).
# Each is probed first, so this is a no-op on a machine that has them.
deps:
	@missing=""; \
	command -v cmake >/dev/null 2>&1 || missing="$$missing cmake"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v redis-sentinel >/dev/null 2>&1 || missing="$$missing redis-sentinel"; \
	command -v redis-cli >/dev/null 2>&1 || missing="$$missing redis-tools"; \
	command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || missing="$$missing dnsmasq-base"; \
	echo 'int main(void){return 0;}' | cc -x c - -o /dev/null >/dev/null 2>&1 || missing="$$missing gcc libc6-dev"; \
	echo 'int main(){return 0;}' | c++ -x c++ - -o /dev/null >/dev/null 2>&1 || missing="$$missing g++"; \
	perl -MIPC::Cmd -MFindBin -MFile::Spec -e1 >/dev/null 2>&1 || missing="$$missing perl"; \
	command -v patch >/dev/null 2>&1 || missing="$$missing patch"; \
	command -v python3 >/dev/null 2>&1 || missing="$$missing python3"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null 2>&1 || [ -x /usr/lib/chromium/chromedriver ] || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
	  echo "make deps: installing$$missing"; \
	  $(SUDO) apt-get update && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi
	@# Pingora 0.9.1 with our patches, in .patched/ (patches/README.md); cargo needs it before any build.
	bash scripts/patch-pingora.sh

build: deps
	$(CARGO) build --workspace --bins

# One profile (dev, with optimised dependencies from the workspace Cargo.toml).
# The e2e tests run the gateway binary, which `cargo test` does not rebuild by
# itself, hence the explicit build first. Then the unit tests our Pingora
# patches add, run in the patched crates (scripts/test-patches.sh: ~1 s when
# built; the first time ~6 min at -j1, reusing the gateway build's OpenSSL).
test: deps
	$(CARGO) build -p gateway
	bash k8s/validate.sh
	$(CARGO) test --workspace
	CARGO="$(CARGO)" bash scripts/test-patches.sh

# Kubernetes manifests, alert rules, Grafana dashboard and Dockerfile, rendered
# and validated by k8s/validate.sh (it installs its tools on first use).
.PHONY: k8s-validate
k8s-validate:
	bash k8s/validate.sh

run: deps
	$(CARGO) build -p gateway -p e2e --bins
	@up=""; gw=""; \
	trap 'kill -INT $$gw $$up 2>/dev/null; wait 2>/dev/null; echo; echo "stopped"' EXIT; \
	trap 'exit 0' INT TERM; \
	$(BIN_DIR)/demo-upstream $(DEMO_UPSTREAMS) & up=$$!; \
	$(BIN_DIR)/gateway --ocelot $(RUN_OCELOT) --listen $(RUN_LISTEN) --admin-listen $(RUN_ADMIN) & gw=$$!; \
	for _ in $$(seq 1 100); do \
	  if (exec 3<>/dev/tcp/$(subst :,/,$(RUN_ADMIN)) && printf 'GET /readyz HTTP/1.0\r\n\r\n' >&3 && head -c 12 <&3 | grep -q 200) 2>/dev/null; then break; fi; \
	  kill -0 $$gw 2>/dev/null || { echo "gateway exited"; exit 1; }; \
	  sleep 0.1; \
	done; \
	echo; \
	echo "gateway on http://$(RUN_LISTEN) (admin http://$(RUN_ADMIN)), routes from $(RUN_OCELOT). Try:"; \
	echo "  curl http://$(RUN_LISTEN)/demo/hello"; \
	echo "  curl http://$(RUN_LISTEN)/users/42/orders/7"; \
	echo "  curl http://$(RUN_LISTEN)/lb/any/path    (twice: round robin over :5001 and :5002)"; \
	echo "Ctrl-C stops both."; \
	wait $$gw

# rustfmt and clippy, then the import-cycle check (last: it fails while the
# gateway's modules still have cycles, and fmt/clippy should be seen anyway).
# scripts/module-cycles.py: exit 1 when top-level modules of a crate name each
# other in a cycle (crate::, super:: paths; test code left out); its own tests
# in scripts/module_cycles_test.py run first. Clippy compiles the workspace, so
# it needs deps (system packages, .patched/).
lint: deps lint-tools
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	PYTHONDONTWRITEBYTECODE=1 python3 scripts/module_cycles_test.py
	python3 scripts/module-cycles.py gateway/src ocelot-compat/src

# rustfmt and clippy come with rustup's default profile but not its minimal
# one (CI images): added when `cargo fmt`/`cargo clippy` are missing.
lint-tools:
	@$(CARGO) fmt --version >/dev/null 2>&1 || { echo "make lint-tools: rustup component add rustfmt"; rustup component add rustfmt; }
	@$(CARGO) clippy --version >/dev/null 2>&1 || { echo "make lint-tools: rustup component add clippy"; rustup component add clippy; }

# Release build + nginx/HAProxy/bare-Pingora comparison; see bench/README.md
# (BENCH_QUICK=1 for a ~1 minute smoke run). Never part of `make test`.
bench: deps
	bash bench/run.sh
