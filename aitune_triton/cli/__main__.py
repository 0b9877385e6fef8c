"""``python -m aitune_triton.cli``."""

from aitune_triton.cli import main

if __name__ == "__main__":
    main()
