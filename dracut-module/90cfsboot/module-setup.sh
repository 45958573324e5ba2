#!/bin/bash
# dracut module: mount the composefs image named by composefs= as the new root.
#
# Installs the frozen cfsboot-setup-root, its config,
# the initrd unit that runs it between sysroot.mount and initrd-root-fs.target,
# and the kernel modules it mounts with. The program is either frozen already
# (`make freeze` + `make install-dracut-module`: in $cfsboot_dir) or, as the Debian
# package has it, frozen here from the installed setuproot package with this
# system's own python3, so that the interpreter in the initramfs and the byte code
# it runs always match, and a python3 security update reaches the next initramfs.

# Variables dracut sets for its modules.
# shellcheck disable=SC2154

cfsboot_dir=/usr/lib/cfsboot/setup-root
cfsboot_conf=/usr/lib/composefs/setup-root-conf.toml
cfsboot_freeze=/usr/lib/cfsboot/freeze.py
cfsboot_src=/usr/lib/python3/dist-packages
# ostree's, in images made for ostree-era bootc: read when there is no cfsboot_conf.
ostree_conf=/usr/lib/ostree/prepare-root.conf

check() {
    # Installed means wanted: include the module whenever the program is there.
    [[ -x "${dracutsysrootdir-}$cfsboot_dir/cfsboot-setup-root" ]] ||
        [[ -f "${dracutsysrootdir-}$cfsboot_freeze" ]] || return 1
    require_kernel_modules erofs overlay || return 1
    return 0
}

depends() {
    echo systemd systemd-initrd
    return 0
}

installkernel() {
    # loop: the fallback for kernels without file-backed EROFS (< 6.12).
    hostonly='' instmods erofs overlay loop
}

install_frozen() {
    # The frozen program: an interpreter binary, a zip of the modules it runs and
    # an sh wrapper. `inst` also brings in the shared libraries its ELF files need
    # (libc, libm, libz, libexpat, libffi).
    # $1: where the program is; $2: the prefix inst must not see (the sysroot).
    local f top=$1 strip=${2-}
    while IFS= read -r -d '' f; do
        inst "${f#"$strip"}" "$cfsboot_dir/${f#"$top"/}"
    done < <(find "$top" -type f -print0)
}

install() {
    local f
    if [[ -x "${dracutsysrootdir-}$cfsboot_dir/cfsboot-setup-root" ]]; then
        install_frozen "${dracutsysrootdir-}$cfsboot_dir" "${dracutsysrootdir-}"
    else
        local tmp
        tmp=$(mktemp -d "${DRACUT_TMPDIR:-/var/tmp}/cfsboot-freeze.XXXXXX") || return 1
        if ! python3 "$cfsboot_freeze" --out "$tmp" --src "$cfsboot_src" \
            --python /usr/bin/python3 > /dev/null; then
            derror "cfsboot: freezing setup-root with $cfsboot_freeze failed"
            rm -rf "$tmp"
            return 1
        fi
        install_frozen "$tmp/cfsboot-setup-root"
        rm -rf "$tmp"
    fi
    # ctypes' libffi is dlopen()ed by an extension module, not linked by a program.
    inst_libdir_file 'libffi.so.*'
    for f in "$cfsboot_conf" "$ostree_conf"; do
        if [[ -f "${dracutsysrootdir-}$f" ]]; then
            inst_simple "$f"
        fi
    done
    inst_simple "$moddir/cfsboot-setup-root.service" \
        "$systemdsystemunitdir/cfsboot-setup-root.service"
    $SYSTEMCTL -q --root "$initdir" add-wants initrd-root-fs.target cfsboot-setup-root.service
}
