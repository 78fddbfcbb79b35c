"""The cgroup quota backend (cgroup v1, v2 and hybrid hosts), in the style of youki and crun.

- ``detect``: which hierarchy serves each controller, and our own place in each.
- ``placement``: ``<own cgroup>/stockade/<host_tag>/<name>`` in every hierarchy; make, kill, remove.
- ``v1/``, ``v2/``: one module per controller; ``v2/core`` for delegation, kill and events.
- ``fs``: the only module that reads and writes cgroup files.
- ``backend``: ``CgroupQuota``, the QuotaBackend + Freezer the plugin registers.
"""
