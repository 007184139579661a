"""`python -m ph serve ...`"""
import sys

from .cli import main

sys.exit(main())
