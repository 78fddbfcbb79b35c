"""stockade-overlay: copy-on-write root file systems on overlayfs."""
