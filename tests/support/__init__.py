"""What the tests and benchmarks share: the stand-in editor, the fake Discord, database checks."""
