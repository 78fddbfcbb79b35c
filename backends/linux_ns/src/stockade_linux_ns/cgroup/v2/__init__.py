"""cgroup v2 (unified): one module per controller, plus ``core`` for what needs no controller.

v2 rules honoured here: processes live only in leaves, a controller is usable in a
cgroup only once every ancestor enabled it in ``cgroup.subtree_control`` (core.delegate),
and device filtering needs an eBPF program, which stockade does not load (there is no
``devices`` module on purpose: on v2 the isolation backend's device nodes are the filter).
"""
