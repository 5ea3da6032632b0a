"""Unit tests import the collection as Ansible does, from the copy scripts/testbed.sh links under .cache."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / ".cache" / "collections"))
