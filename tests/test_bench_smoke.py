"""``python -m bench --quick`` runs every implemented figure and writes its JSON; no timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from servers import pgbouncer_available, postgres_binaries_available

REPO = Path(__file__).resolve().parent.parent
IMPLEMENTED = {"1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14"}
SERVER_FIGURES = {"6", "7", "8", "10", "11", "12", "13", "14"}


def test_quick_run_writes_every_figure(tmp_path: Path) -> None:
    reason = postgres_binaries_available() or pgbouncer_available()
    if reason is not None and os.environ.get("CI"):
        pytest.fail(f"CI needs PostgreSQL and PgBouncer for the server figures: {reason}", pytrace=False)
    flags = ["--no-postgres"] if reason is not None else []
    out = tmp_path / "bench.json"

    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(out), *flags],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )

    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text(encoding="utf-8"))
    figures = report["figures"]
    assert set(figures) == IMPLEMENTED
    for number in IMPLEMENTED:
        expected = "skipped" if flags and number in SERVER_FIGURES else "ok"
        assert figures[number]["status"] == expected, (number, figures[number]["notes"])
        if expected == "ok":
            assert figures[number]["rows"], number
            assert all(isinstance(row["label"], str) for row in figures[number]["rows"])
    assert report["machine"]["python"]
    assert "ratio" in proc.stdout
