"""What the tests share and the package does not ship: toy shards, tiny models, W-process runs.

tests/ is on sys.path (pytest's `pythonpath` in pyproject.toml), so a test imports these as
`from helpers.toy_shards import write_toy_shards`.
"""
