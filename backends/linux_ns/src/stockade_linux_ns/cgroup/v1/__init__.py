"""cgroup v1: one module per controller, each on its own hierarchy's directory.

Every function takes the instance's directory in that controller's hierarchy.
``None`` in a Resources field means "leave as it is", so the same code serves
create and live update.
"""
