"""Stand-in for pip's get-pip.py bootstrap that ansible-test downloads.

ansible-test fetches get-pip.py from a host this sandbox cannot reach; this
script does the same job (install pip and the given packages into the current
interpreter) from a pip wheel that scripts/sanity.sh downloads from PyPI.
"""
import glob
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, sorted(glob.glob(os.path.join(HERE, "pip-*.whl")))[-1])

from pip._internal.cli.main import main  # noqa: E402  pylint: disable=wrong-import-position

# get-pip.py's own flags; pip does not know them.
ARGS = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.exit(main(["install", "--upgrade", "--force-reinstall"] + ARGS))
