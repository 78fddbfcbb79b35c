"""An example third-party stockade backend: the classic chroot, declaring only what it does."""
