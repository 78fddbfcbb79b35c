"""stockade-freebsd-jail: FreeBSD jail isolation and rctl quota."""
