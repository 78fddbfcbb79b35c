"""stockade: one API over OS-level virtualization (Linux namespaces, FreeBSD jails)."""
