"""mentor-example: one component of every hook kind, written against the public `mentor` API only.

Each module is a plugin of its own (see pyproject.toml's entry points) and is
the worked example of its hook in mentor's docs/plugins.md.
"""
