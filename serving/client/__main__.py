"""`python -m serving.client`: the command line of serving/cli.py."""
import sys

from serving.cli import main

sys.exit(main())
