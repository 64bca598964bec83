"""The ``cuantiza`` command and what only it uses (demo, explain, size)."""
