"""`python -m peapod.cli` (torchrun's way in) runs the `peapod` command."""

from peapod.cli.main import main

main()
