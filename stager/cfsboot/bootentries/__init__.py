"""Boot entries: BLS Type #1 files, UKIs, a generated GRUB menu, kernel arguments, os-release."""
