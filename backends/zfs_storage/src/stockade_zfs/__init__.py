"""stockade-zfs: ZFS storage through libzfs_core and libzfs, bound with cffi."""
