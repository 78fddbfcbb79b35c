"""stockade-linux-ns: isolation through Linux namespaces, quota through cgroups."""
