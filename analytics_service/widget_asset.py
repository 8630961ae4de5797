"""The embeddable widget script as served: read once at start, minified, hashed, gzipped.

The one source is `widget/widget.js` at the top of the repository. A built package (wheel,
image) carries a copy as `analytics_service/widget.js`, which setup.py puts there; a source
checkout (editable install) has no copy and reads `widget/widget.js` itself, so an edit is
served on the next start without reinstalling. Neither lies under `static/`: only the
minified asset is ever served (`/widget.js`, `/widget.v<hash>.js`), never the source.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import rjsmin

PACKAGED = "widget.js"
CHECKOUT = Path(__file__).resolve().parent.parent / "widget" / "widget.js"


@dataclass(frozen=True, slots=True)
class WidgetAsset:
    body: bytes
    gzipped: bytes
    version: str
    integrity: str

    @property
    def versioned_path(self) -> str:
        """The immutable URL path: it changes whenever the served bytes change."""
        return f"/widget.v{self.version}.js"

    @classmethod
    def from_source(cls, source: str) -> WidgetAsset:
        body = rjsmin.jsmin(source).encode()
        return cls(
            body=body,
            # mtime=0: the same script always gzips to the same bytes.
            gzipped=gzip.compress(body, compresslevel=9, mtime=0),
            version=hashlib.sha256(body).hexdigest()[:16],
            integrity="sha384-" + base64.b64encode(hashlib.sha384(body).digest()).decode(),
        )


def source_text() -> str:
    packaged = resources.files("analytics_service").joinpath(PACKAGED)
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    if CHECKOUT.is_file():
        return CHECKOUT.read_text(encoding="utf-8")
    raise FileNotFoundError(
        f"the widget script is neither packaged ({PACKAGED} in analytics_service) nor in a "
        f"source checkout ({CHECKOUT}): install the package with pip, which runs setup.py"
    )


def load() -> WidgetAsset:
    return WidgetAsset.from_source(source_text())
