#!/bin/bash
# dracut module: mount the composefs image named by composefs= as the new root.
#
# Installs the frozen cfsboot-setup-root (built by `make freeze`, installed
# with `make install-dracut-module`), its config,
# the initrd unit that runs it between sysroot.mount and initrd-root-fs.target,
# and the kernel modules it mounts with.

# Variables dracut sets for its modules.
# shellcheck disable=SC2154

cfsboot_dir=/usr/lib/cfsboot/setup-root
cfsboot_conf=/usr/lib/composefs/setup-root-conf.toml

check() {
    # Installed means wanted: include the module whenever the program is there.
    [[ -x "${dracutsysrootdir-}$cfsboot_dir/cfsboot-setup-root" ]] || return 1
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

install() {
    local f
    # The frozen program (`make freeze`): an interpreter binary, a zip of the
    # modules it runs and an sh wrapper. `inst` also brings in the shared
    # libraries its ELF files need (libc, libm, libz, libexpat, libffi).
    while IFS= read -r -d '' f; do
        inst "${f#"${dracutsysrootdir-}"}"
    done < <(find "${dracutsysrootdir-}$cfsboot_dir" -type f -print0)
    # ctypes' libffi is dlopen()ed by an extension module, not linked by a program.
    inst_libdir_file 'libffi.so.*'
    if [[ -f "${dracutsysrootdir-}$cfsboot_conf" ]]; then
        inst_simple "$cfsboot_conf"
    fi
    inst_simple "$moddir/cfsboot-setup-root.service" \
        "$systemdsystemunitdir/cfsboot-setup-root.service"
    $SYSTEMCTL -q --root "$initdir" add-wants initrd-root-fs.target cfsboot-setup-root.service
}
