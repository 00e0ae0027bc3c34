"""The calls of gocept.lockd's own doctest, in order: (method, resource,
client). Played by scenario.py against daemons and by component.py
in-process; the Rust tests compare what each prints."""

STEPS = [
    ("lock", "resource1", "client1"),
    ("lock", "resource1", "client2"),
    ("lock", "resource2", "client2"),
    ("unlock", "resource1", "client2"),
    ("unlock", "resource1", "client1"),
    ("unlock", "resource1", "client1"),
]
