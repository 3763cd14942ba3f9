"""Fuzz the RAFS readers: `python -m tools.fuzz [--runs N | --seconds S]`.

Atheris (libFuzzer) mutates bootstraps seeded from the real upstream images in
../shared/fixtures/nydus and from images our builder writes, opens each with rafs.open_bytes and
walks every inode (tools.fuzz.walk.exercise). A finding is any exception other than RafsError
(UnsupportedImageError and ChunkDataError are RafsErrors), a case running over --timeout seconds,
or an allocation pushing the process over --alloc-limit-mb above its size at start (the address
space is capped, so such an allocation raises MemoryError). Findings are written to
--artifacts and the run exits non-zero. Prints a summary line `fuzz: N cases ...` at the end.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "fixtures" / "nydus"


def write_seeds(corpus: Path) -> list[str]:
    """Seed the corpus: the real upstream bootstraps and our builder's images of the sample tree."""
    corpus.mkdir(parents=True, exist_ok=True)
    names = []
    real = {"upstream-v5-sha256-none": SHARED / "v5-sha256-none/bootstrap",
            "upstream-v6-zstd": SHARED / "v6-zstd/bootstrap",
            "upstream-v6-inline-blob": SHARED / "v6-blob-with-inline-bootstrap/blobs"
                                                "/2fa78cad554b75ac91a4a125ed148d0ddeb25efa4aaa8bd80e5dc292690a4dca"}
    for name, path in real.items():
        if path.is_file():
            (corpus / name).write_bytes(path.read_bytes())
            names.append(name)
    if not names:
        print(f"fuzz: real images not found at {SHARED}; seeding from builder output only",
              file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        subprocess.run([sys.executable, str(ROOT / "fixtures/make_sample_tree.py"), str(src)],
                       check=True, capture_output=True)
        for version, compressor in (("5", "lz4_block"), ("6", "zstd")):
            out = Path(tmp) / f"v{version}"
            subprocess.run([sys.executable, "-m", "tools.image", "create", "--fs-version", version,
                            "--compressor", compressor, "--chunk-size", "0x1000", "--repeatable",
                            "--bootstrap", str(out / "bootstrap"), "--blob-dir", str(out / "blobs"),
                            str(src)], check=True, capture_output=True, cwd=ROOT)
            (corpus / f"builder-v{version}").write_bytes((out / "bootstrap").read_bytes())
            names.append(f"builder-v{version}")
    return names


def _target():
    import rafs
    from rafs.open import open_bytes
    from tools.fuzz.walk import exercise

    def one_input(data: bytes) -> None:
        try:
            image = open_bytes(data, "fuzz")
        except rafs.RafsError:
            return
        try:
            exercise(image)
        except rafs.RafsError:
            pass
        finally:
            image.close()

    return one_input


_INTERESTING = (0, 1, 2, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0xFFF, 0x1000, 0x7FFF, 0xFFFF, 0x10000,
                0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32, (1 << 63) - 1, (1 << 64) - 1)


def structured_mutator(atheris):
    """Half of the time libFuzzer's byte mutations; otherwise overwrite 1-3 aligned integers of the
    on-disk structures with boundary values (sizes, offsets, counts and indexes live there)."""
    import random

    def mutate(data: bytes, max_size: int, seed: int) -> bytes:
        rnd = random.Random(seed)
        if len(data) < 16 or rnd.random() < 0.5:
            return atheris.Mutate(data, max_size)
        b = bytearray(data)
        for _ in range(rnd.randint(1, 3)):
            width = rnd.choice((1, 2, 4, 8))
            pos = rnd.randrange(0, len(b) - width + 1) & ~(width - 1)
            value = rnd.choice(_INTERESTING) if rnd.random() < 0.8 else rnd.getrandbits(8 * width)
            b[pos:pos + width] = (value & ((1 << 8 * width) - 1)).to_bytes(width, "little")
        return bytes(b[:max_size])

    return mutate


def run_child(args: argparse.Namespace) -> int:
    """Inside the fuzzing process: cap the address space, then hand over to libFuzzer."""
    import atheris

    with atheris.instrument_imports(include=["rafs"]):
        one_input = _target()
    with open("/proc/self/statm") as f:
        vsize = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    cap = vsize + (args.alloc_limit_mb << 20) + (64 << 20)  # + slack for libFuzzer's own threads
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    lib_args = [sys.argv[0], str(args.corpus), f"-timeout={args.timeout}",
                f"-rss_limit_mb={args.alloc_limit_mb * 4}", f"-artifact_prefix={args.artifacts}/",
                "-print_final_stats=1", f"-seed={args.seed}", "-max_len=65536"]
    if args.runs:
        lib_args.append(f"-runs={args.runs}")
    if args.seconds:
        lib_args.append(f"-max_total_time={args.seconds}")
    atheris.Setup(lib_args, one_input, custom_mutator=structured_mutator(atheris))
    atheris.Fuzz()
    return 0


def corpus_depth(corpus: Path) -> str:
    """How deep the grown corpus reaches: how many inputs open, and walk without an error."""
    import rafs
    from rafs.open import open_bytes
    from tools.fuzz.walk import exercise

    total = opened = walked = 0
    for path in corpus.iterdir():
        total += 1
        try:
            image = open_bytes(path.read_bytes(), "corpus")
        except rafs.RafsError:
            continue
        opened += 1
        try:
            if exercise(image) > 0:
                walked += 1
        except rafs.RafsError:
            pass
        finally:
            image.close()
    return f"{total} inputs, {opened} open as images, {walked} walk every inode without an error"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=0, help="stop after N cases")
    p.add_argument("--seconds", type=int, default=0, help="stop after S seconds")
    p.add_argument("--timeout", type=int, default=1, help="a case over this many seconds is a finding")
    p.add_argument("--alloc-limit-mb", type=int, default=256)
    p.add_argument("--seed", type=int, default=1, help="libFuzzer's random seed (reproducible runs)")
    p.add_argument("--corpus", type=Path, default=Path("/tmp/pynydusd-fuzz/corpus"))
    p.add_argument("--artifacts", type=Path, default=Path("/tmp/pynydusd-fuzz/findings"))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return run_child(args)
    if not args.runs and not args.seconds:
        p.error("give --runs or --seconds")
    args.artifacts.mkdir(parents=True, exist_ok=True)
    seeds = write_seeds(args.corpus)
    t = time.monotonic()
    cmd = [sys.executable, "-m", "tools.fuzz", "--child", "--timeout", str(args.timeout),
           "--alloc-limit-mb", str(args.alloc_limit_mb), "--seed", str(args.seed),
           "--corpus", str(args.corpus), "--artifacts", str(args.artifacts)]
    if args.runs:
        cmd += ["--runs", str(args.runs)]
    if args.seconds:
        cmd += ["--seconds", str(args.seconds)]
    proc = subprocess.run(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    elapsed = time.monotonic() - t
    stats = {}
    for line in proc.stderr.splitlines():
        if line.startswith("stat::"):
            key, _, value = line[6:].partition(":")
            stats[key.strip()] = value.strip()
    findings = sorted(p.name for p in args.artifacts.iterdir())
    if proc.returncode != 0 or findings:
        sys.stderr.write(proc.stderr[-20000:])
    for key in ("average_exec_per_sec", "slowest_unit_time_sec", "new_units_added"):
        print(f"fuzz: {key} {stats.get(key, '?')}")
    depth = corpus_depth(args.corpus)
    cases = stats.get("number_of_executed_units", "?")
    peak = stats.get("peak_rss_mb", "?")
    print(f"fuzz: {cases} cases in {elapsed:.0f} s, seeds {', '.join(seeds)}; peak RSS {peak} MB; "
          f"exit {proc.returncode}; findings: {', '.join(findings) or 'none'}")
    print(f"fuzz: corpus {depth}")
    return 0 if proc.returncode == 0 and not findings else 1


if __name__ == "__main__":
    sys.exit(main())
