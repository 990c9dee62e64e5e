"""The browser helper must see console errors, or the page tests would assert nothing."""

import shutil
from pathlib import Path

import pytest

from tests.support.browser import render


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium (Debian) missing")
def test_console_errors_and_uncaught_exceptions_are_caught(tmp_path: Path) -> None:
    page = tmp_path / "p.html"
    page.write_text('<p id="x">hi</p><script>console.error("boom"); undefinedFn();</script>')
    result = render(page.as_uri(), tmp_path / "p.png")
    assert 'id="x"' in result.dom
    assert any("boom" in e for e in result.console_errors)
    assert any("undefinedFn" in e for e in result.console_errors)
