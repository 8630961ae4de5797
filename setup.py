"""One build step beyond pyproject.toml: the widget script goes into the wheel.

Its one source is `widget/widget.js` (the repository's layout keeps the browser script out
of the Python package). A built package carries a copy as `analytics_service/widget.js`,
outside `static/`, so only the minified asset is ever served (widget_asset.py). An editable
install builds nothing: widget_asset.py reads `widget/widget.js` itself there.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SOURCE = Path("widget", "widget.js")


class BuildPyWithWidget(build_py):
    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            self.copy_file(str(SOURCE), str(Path(self.build_lib, "analytics_service", SOURCE.name)))


setup(cmdclass={"build_py": BuildPyWithWidget})
