"""The embeddable widget script as served: read once at start, minified, hashed, gzipped.

The source lives in `widget/widget.js` at the top of the repository; the package reaches it
through the symlink `analytics_service/static/widget.js`, which setuptools replaces by the
file's content when it builds a wheel. So an editable install and an installed wheel serve
the same bytes, and there is a single copy to edit.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
from dataclasses import dataclass
from importlib import resources

import rjsmin

SOURCE = "static/widget.js"


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


def load() -> WidgetAsset:
    source = resources.files("analytics_service").joinpath(SOURCE).read_text(encoding="utf-8")
    return WidgetAsset.from_source(source)
