"""``python -m cra`` runs the command line."""

from cra.cli import main

main()
