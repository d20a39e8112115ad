"""The setup cell every notebook starts with, and its Open-in-Colab badge, generated from one setting.

The setup cell must run *before* mechlab is installed, so its code cannot import mechlab: this module
writes that code once (``setup_cell_source``) and ``python -m mechlab.course.exercises`` stamps it into the
first code cell of every notebook (the cell that starts with ``# mechlab: setup``).

In Colab the cell runs exactly one ``pip install`` of mechlab, constrained to the torch and numpy that
Colab already has, so they are never reinstalled or downgraded. Anywhere else it does nothing.
"""

from __future__ import annotations

# The one repository setting: the badge and the Colab install both derive from it. Whoever publishes the course
# changes these two lines (or INSTALL_TARGET, to install a PyPI release instead, e.g. "mechlab==0.1.0"), then runs
# `python -m mechlab.course.exercises solutions exercises` to restamp every notebook's setup cell and badge.
REPOSITORY = "mechlab-course/mechlab"
BRANCH = "main"
INSTALL_TARGET = f"mechlab @ git+https://github.com/{REPOSITORY}@{BRANCH}"  # what the setup cell pip-installs

SETUP_MARKER = "# mechlab: setup"
BADGE_PREFIX = "[![Open In Colab]"


def install_target() -> str:
    """The requirement the Colab setup cell installs (``INSTALL_TARGET``)."""
    return INSTALL_TARGET


def setup_cell_source() -> str:
    """The code of the setup cell (self-contained: it runs before mechlab is importable)."""
    return f'''{SETUP_MARKER}
# In Colab: install mechlab once, keeping Colab's own torch and numpy. Elsewhere: nothing to do.
import sys

if "google.colab" in sys.modules:
    import importlib.metadata
    import importlib.util
    import subprocess
    import tempfile

    if importlib.util.find_spec("mechlab") is None:
        keep = [f"{{name}}=={{importlib.metadata.version(name)}}" for name in ("torch", "numpy")
                if importlib.util.find_spec(name) is not None]
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
            constraints.write("\\n".join(keep) + "\\n")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-c", constraints.name,
                        "{install_target()}"], check=True)'''


def colab_url(path: str) -> str:
    """The Colab URL of a notebook path relative to the repository root (e.g. ``notebooks/01_x.ipynb``)."""
    return f"https://colab.research.google.com/github/{REPOSITORY}/blob/{BRANCH}/{path}"


def badge_markdown(path: str) -> str:
    return f"{BADGE_PREFIX}(https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(path)})"
