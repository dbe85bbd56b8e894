"""``python -m edgeseg.cli``: the ``edgeseg`` command, as the tests and benchmarks start it."""

from edgeseg.cli import main

if __name__ == "__main__":
    main()
