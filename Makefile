# The two set-up commands from the README: `make demo` and `make test`.
# Each one installs what it needs (SoftHSM2 from the distribution, the venv) and is safe to rerun.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-16)
PYTEST_ARGS ?=

.PHONY: demo test test-nss bench lint screenshots softhsm pkcs11-tool sshd p11-kit nss venv clean

demo: softhsm $(STAMP)
	$(BIN)/kmtui demo $(ARGS)

test: softhsm pkcs11-tool sshd p11-kit $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The suites adapted so far, again on a second PKCS#11 implementation: NSS softokn through
# p11-kit-proxy (tests/tokens.py), with the tests a token cannot pass skipped by capability.
test-nss: nss p11-kit pkcs11-tool $(STAMP)
	KMTUI_TEST_TOKEN=nss $(BIN)/python -m pytest tests/unit/test_hsm.py tests/unit/test_profile.py $(PYTEST_ARGS)

bench: softhsm $(STAMP)
	$(BIN)/python -m pytest tests/bench -m bench -s -p no:randomly $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check kmtui tests
	$(BIN)/ruff format --check kmtui tests
	$(BIN)/mypy

screenshots: softhsm $(STAMP)
	$(BIN)/python -m tests.ui.make_screenshots screenshots

venv: $(STAMP)

# SoftHSM2 is the demo's and the tests' token. Installed from the distribution when missing.
softhsm:
	@if command -v softhsm2-util >/dev/null 2>&1; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "kmtui needs SoftHSM2 (the 'softhsm2' package; 'softhsm' on Fedora/Homebrew)." >&2; \
	  echo "This system has no apt-get: install it with your package manager, then rerun make." >&2; \
	  exit 1; \
	fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; \
	else echo "Installing softhsm2 needs root: run 'apt-get install softhsm2' as root, then rerun make." >&2; exit 1; fi; \
	echo "Installing softhsm2 from the distribution..."; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq softhsm2 >/dev/null \
	  || { echo "apt-get could not install softhsm2; install it by hand and rerun make." >&2; exit 1; }

# pkcs11-tool (OpenSC) plants objects on the test token as a user without the PIN would.
pkcs11-tool:
	@if command -v pkcs11-tool >/dev/null 2>&1; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "The tests need pkcs11-tool (the 'opensc' package): install it, then rerun make." >&2; \
	  exit 1; \
	fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; \
	else echo "Installing opensc needs root: run 'apt-get install opensc' as root, then rerun make." >&2; exit 1; fi; \
	echo "Installing opensc (pkcs11-tool) from the distribution..."; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq opensc >/dev/null \
	  || { echo "apt-get could not install opensc; install it by hand and rerun make." >&2; exit 1; }

# openssh-server: one test starts its own sshd on a localhost port to prove that an operation kept
# to the console is refused over SSH. Installed when missing; the system service it brings is
# switched off again, so `make test` leaves no SSH server listening.
sshd:
	@if [ -x /usr/sbin/sshd ] || command -v sshd >/dev/null 2>&1; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "The SSH test needs openssh-server; without it that one test is skipped." >&2; exit 0; \
	fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; \
	else echo "Installing openssh-server needs root; without it the SSH test is skipped." >&2; exit 0; fi; \
	echo "Installing openssh-server from the distribution (for the SSH test)..."; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq openssh-server >/dev/null \
	  || { echo "apt-get could not install openssh-server; the SSH test will be skipped." >&2; exit 0; }; \
	if [ -d /run/systemd/system ]; then \
	  echo "Switching off the system sshd the package started (the test runs its own)."; \
	  $$SUDO systemctl disable --now ssh.service ssh.socket >/dev/null 2>&1 || true; \
	fi

# $(call apt-need,TEST,PACKAGES,WHY): install PACKAGES from the distribution unless TEST holds.
define apt-need
	@if $(1); then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "$(3) needs the package(s) $(2): install them and rerun make." >&2; exit 1; \
	fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; \
	else echo "Installing $(2) needs root: run 'apt-get install $(2)' as root and rerun make." >&2; exit 1; fi; \
	echo "Installing $(2) from the distribution ($(3))..."; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(2) >/dev/null \
	  || { echo "apt-get could not install $(2); install it by hand and rerun make." >&2; exit 1; }
endef

# p11-kit-proxy: a module that exports nothing but C_GetFunctionList (the log-in test, and the
# way NSS softokn is reached).
p11-kit:
	$(call apt-need,ls /usr/lib/*/p11-kit-proxy.so /usr/lib64/p11-kit-proxy.so 2>/dev/null | grep -q .,p11-kit-modules p11-kit,the p11-kit-proxy tests)

# NSS softokn and certutil, the second token implementation of `make test-nss`.
nss:
	$(call apt-need,command -v certutil >/dev/null 2>&1 && ls /usr/lib/*/libsoftokn3.so /usr/lib64/libsoftokn3.so 2>/dev/null | grep -q .,libnss3 libnss3-tools,make test-nss)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip >/dev/null
	$(BIN)/python -m pip install -q -e '.[test,dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
