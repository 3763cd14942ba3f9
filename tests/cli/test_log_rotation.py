"""--log-file with --log-rotation-size (MiB): the file is rotated at that size into timestamped,
gzip-compressed files, of which the 10 newest are kept; no line is lost from the newest ones."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WRITER = r"""
import logging, sys
from daemon import cli, logs
args = cli.parse_args(["--log-file", sys.argv[1], "--log-rotation-size", "1",
                       "--bootstrap", "x", "--backend", "/tmp", "/mnt"], "pynydusd")
logs.setup(args.log_level, args.log_file, args.log_rotation_size)
log = logging.getLogger("test")
for i in range(int(sys.argv[2])):
    log.info("line %07d %s", i, "x" * 200)
import threading
for t in threading.enumerate():
    if t.name == "log-rotation":
        t.join()
"""


def test_the_log_file_rotates_compressed_and_keeps_the_ten_newest(tmp_path):
    lines = 80_000  # ~19 MiB of log: about 19 rotations
    subprocess.run([sys.executable, "-c", WRITER, str(tmp_path / "nydusd"), str(lines)],
                   check=True, cwd=ROOT, timeout=120)
    current = tmp_path / "nydusd.log"  # ".log" is added to a name without an extension
    assert current.stat().st_size <= (1 << 20) + 300
    rotated = sorted(tmp_path.glob("nydusd_r*.log.gz"))
    assert len(rotated) == 10, [p.name for p in tmp_path.iterdir()]
    assert not list(tmp_path.glob("nydusd_r*.log"))  # every rotated file got compressed
    numbers = []
    for path in rotated:
        text = gzip.decompress(path.read_bytes()).decode()
        assert len(text) <= (1 << 20) + 300
        numbers += [int(line.split("line ")[1][:7]) for line in text.splitlines()]
    numbers += [int(line.split("line ")[1][:7]) for line in current.read_text().splitlines()]
    assert numbers == list(range(numbers[0], lines))  # the newest lines, none lost, in order
    assert numbers[0] > 0  # the oldest rotated files were removed
