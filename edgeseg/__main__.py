"""``python -m edgeseg``: the ``edgeseg`` command (what ``torchrun -m edgeseg train`` starts on each rank)."""

from edgeseg.cli import main

if __name__ == "__main__":
    main()
