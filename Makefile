# cfsboot entry points. `make setup` then `make test` on a fresh Debian machine.
SHELL := /bin/bash
.DEFAULT_GOAL := test

# The distribution's interpreter (what the Debian package runs, built with PGO and LTO),
# not whatever `python3` a version manager puts first in PATH.
PYTHON ?= /usr/bin/python3
VENV ?= .venv
CACHE ?= /var/cache/cfsboot
PY := $(VENV)/bin/python
export CFSBOOT_CACHE := $(CACHE)
export CFSBOOT_REFTOOLS := $(CACHE)/reftools-bin
export CFSBOOT_COMPOSEFS_ASSETS := $(CACHE)/composefs-assets

APT_PACKAGES := \
	python3 python3-venv python3-dev gcc make git libffi-dev libssl-dev pkg-config \
	mmdebstrap debian-archive-keyring arch-test \
	shellcheck fsverity erofs-utils e2fsprogs util-linux \
	mtools dosfstools fdisk skopeo zstd xz-utils cpio btrfs-progs xfsprogs \
	qemu-system-x86 qemu-utils ovmf hyperfine docker-registry systemd-boot-efi \
	dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools \
	python3-zstandard lintian groff-base fakeroot buildah podman grub-common

.PHONY: setup apt venv native reftools pymin selinux-oracle testos test unit fuzz lint vm-test vm-test-core bench freeze install-dracut-module deb base-image demo clean

setup: apt venv reftools pymin selinux-oracle testos

apt:
	@if [ "$$(id -u)" = 0 ]; then \
		apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(APT_PACKAGES); \
	else \
		echo "not root: skipping apt-get install of: $(APT_PACKAGES)"; \
	fi

venv:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	# setuptools' editable hook for two source roots is an import finder that pulls in
	# pathlib, re, urllib and contextlib at every interpreter start (7 ms of each
	# command's run); a plain path file names the same two directories at no cost.
	site=$$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))') && \
	for pth in "$$site"/__editable__.cfsboot-*.pth; do \
		printf '%s\n' '$(CURDIR)/stager' '$(CURDIR)/setup-root' > "$$pth"; \
	done && \
	rm -f "$$site"/__editable___cfsboot_*_finder.py

# Rebuild the mypyc-compiled modules and the C one in place (stager/cfsboot/composefs/
# native.py) after editing them; until then the edited sources run as pure Python. (mypyc
# leaves a module whose C is unchanged as it was: the touch marks it current.)
native:
	$(PY) setup.py -q build_ext --inplace
	find stager -name '*.so' -exec touch {} +

reftools:
	bash tests/reftools/build.sh $(CACHE)
	bash tests/reftools/bootctl.sh $(CACHE)

# The small CPython the frozen setup-root runs on (setup-root/pymin.sh; cached).
pymin:
	bash setup-root/pymin.sh $(CACHE)

# A trixie chroot with selinux-policy-default: libselinux answers for the labelling tests.
selinux-oracle:
	bash tests/reftools/selinux-oracle.sh $(CACHE)

# The Debian trixie test OS rootfs (mmdebstrap, cached by its inputs): the dracut
# test and the VM tests build on it.
testos:
	$(PY) vm-tests/testos.py --cache $(CACHE)

# The composefs tests once more with the compiled modules (mypyc's and the C one) left
# aside (native.py): the pure-Python path must keep working where they cannot be built.
PURE_TESTS := tests/unit/test_dumpfile.py tests/unit/test_erofs_writer.py tests/unit/test_limits.py \
	tests/unit/test_native.py tests/conformance/test_writer_conformance.py \
	tests/unit/test_fsverity.py tests/unit/test_fsverity_native.py tests/unit/test_layers.py \
	tests/unit/test_oci_tar.py tests/unit/test_oci_import.py tests/fuzz/test_fuzz_regressions.py

test: lint
	$(PY) -m pytest -q tests
	CFSBOOT_PURE_PYTHON=1 $(PY) -m pytest -q $(PURE_TESTS)

unit:
	$(PY) -m pytest -q tests/unit

# Longer fuzzing than `make test`: the hypothesis targets (tests/fuzz) with FUZZ_SCALE
# times the examples, then atheris (coverage-guided) on each for FUZZ_SECONDS; an input
# that crashes one is left in build/fuzz/ (pin it in tests/fuzz/test_fuzz_regressions.py).
FUZZ_SCALE ?= 50
FUZZ_SECONDS ?= 60
fuzz:
	CFSBOOT_FUZZ_SCALE=$(FUZZ_SCALE) $(PY) -m pytest -q tests/fuzz
	@if ! $(PY) -c 'import atheris' 2>/dev/null; then \
		echo "atheris is not installed: skipping the coverage-guided runs"; exit 0; fi; \
	mkdir -p build/fuzz && \
	for t in $$($(PY) tests/fuzz/atheris_run.py --list); do \
		echo "atheris: $$t ($(FUZZ_SECONDS) s)"; \
		$(PY) tests/fuzz/atheris_run.py $$t -max_total_time=$(FUZZ_SECONDS) \
			-artifact_prefix=build/fuzz/$$t- -print_final_stats=1 2>&1 \
			| grep -E '^(stat::number_of_executed_units|==|ERROR|[A-Za-z]+Error)' || true; \
		[ "$${PIPESTATUS[0]}" = 0 ] || exit 1; \
	done

lint:
	$(VENV)/bin/ruff check stager setup-root tests vm-tests bench debian
	$(VENV)/bin/ruff format --check stager setup-root tests vm-tests bench debian
	$(VENV)/bin/mypy stager/cfsboot setup-root/setuproot tests bench debian/manpage.py
	$(VENV)/bin/mypy vm-tests
	shellcheck dracut-module/*/*.sh dracut-module/kernel/cfsboot-kernel-hook tests/reftools/*.sh setup-root/*.sh \
		.ci/run examples/debian/check-status $(wildcard vm-tests/*.sh bench/*.sh)

# Every VM scenario (1-11 and the feature scenarios); vm-test-core: the ones CI runs on each submission (1-4, 8).
vm-test:
	$(PY) -m pytest -q -rA -m vm vm-tests

vm-test-core:
	$(PY) -m pytest -q -rA -m "vm and vmcore" vm-tests

bench:
	$(PY) bench/run.py $(BENCH)

freeze:
	$(PY) setup-root/freeze.py

install-dracut-module:
	$(MAKE) -C dracut-module install DESTDIR=$(DESTDIR)

# The Debian package, built with Debian's tooling from a copy of the tracked (and new,
# not ignored) files: build/deb/cfsboot_VERSION_amd64.deb.
DEB_DIR := build/deb
deb:
	rm -rf $(DEB_DIR) && mkdir -p $(DEB_DIR)/src
	git ls-files -z --cached --others --exclude-standard | \
		while IFS= read -r -d '' f; do [ -e "$$f" ] && printf '%s\0' "$$f"; done | \
		tar -c --null -T - | tar -x -C $(DEB_DIR)/src
	cd $(DEB_DIR)/src && env -u PYTHONPATH PATH=/usr/sbin:/usr/bin:/sbin:/bin \
		dpkg-buildpackage -b -us -uc > ../build.log 2>&1 || { tail -30 ../build.log; exit 1; }
	rm -rf $(DEB_DIR)/src
	@ls -l $(DEB_DIR)/*.deb

# No registry here: the example image builds FROM the Debian trixie rootfs that
# `make setup` made with mmdebstrap, imported into containers-storage (vfs).
base-image:
	PYTHONPATH=tests $(PY) vm-tests/osimage.py --base-image localhost/debian:trixie

# README's "Build a bootable image", run as it is written there: build the example
# image, install it to a disk image, boot it in QEMU, print the guest's `cfsboot status`.
demo:
	awk '/^<!-- demo -->/ {f = 1; next} f && /^```/ {if (g) exit; g = 1; next} g' README.md \
		| bash -euo pipefail -x

clean:
	rm -rf $(VENV) build dist .mypy_cache .ruff_cache .pytest_cache
