"""pynydusd side by side with a plain directory, kernel EROFS, bindfs, squashfuse_ll and ratarmount.

`make bench` (full corpus, 3 rounds) and `make bench-quick` (small corpus, 1 round). Run as root:
it mounts, drops the page cache and uses loop devices.

One deterministic corpus shaped like a container rootfs (a copy of /usr/lib/python3.11 and
/usr/share/doc, files of random and of compressible data, a directory of tiny files) is packed
for every tool from the same tree, then each tool is mounted in turn, rounds interleaved so that
machine drift hits all alike. Each result is checked against the corpus (entry counts, bytes,
the exact bytes of the random reads); a wrong answer is reported as an error, never averaged in.
Writes tools/bench/results.md, results.json and results.png.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent

PROFILES = {
    "full": {"trees": ["/usr/lib/python3.11", "/usr/share/doc"], "big_mib": 256, "tiny": 100_000,
             "rounds": 3},
    "quick": {"trees": ["/usr/lib/python3.11/email", "/usr/lib/python3.11/json",
                        "/usr/share/doc/python3.11"], "big_mib": 64, "tiny": 10_000, "rounds": 1},
}
RANDOM_READS = 10_000
OPEN_CLOSE = 10_000


# ---- corpus ---------------------------------------------------------------------------------

def make_corpus(dest: Path, prof: dict) -> dict:
    """Build the corpus once (deterministic content); return its truth: counts, bytes, paths."""
    truth_file = dest.parent / "truth.json"
    if truth_file.exists() and dest.is_dir():
        return json.loads(truth_file.read_text())
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for tree in prof["trees"]:
        target = dest / tree.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", "--no-preserve=xattr", tree, str(target)], check=True)
    big = dest / "big"
    big.mkdir()
    rnd = random.Random(1)
    n = prof["big_mib"] << 20
    with open(big / "random.bin", "wb") as f:
        for _ in range(n >> 20):
            f.write(rnd.randbytes(1 << 20))
    words = [rnd.randbytes(rnd.randrange(3, 9)).hex().encode() for _ in range(2000)]
    with open(big / "text.bin", "wb") as f:  # compressible: log-like lines
        written = 0
        while written < n:
            line = b" ".join(rnd.choice(words) for _ in range(12)) + b"\n"
            line = line[:n - written]
            f.write(line)
            written += len(line)
    tiny = dest / "tiny"
    for i in range(prof["tiny"]):
        d = tiny / f"{i // 1000:03d}"
        if i % 1000 == 0:
            d.mkdir(parents=True)
        (d / f"{i:06d}").write_bytes(f"tiny file {i}\n".encode() * (1 + i % 7))
    entries, files, size = 1, [], 0
    for dirpath, dirs, names in os.walk(dest):
        entries += len(dirs) + len(names)
        for name in names:
            p = os.path.join(dirpath, name)
            if os.path.isfile(p) and not os.path.islink(p):
                st = os.lstat(p)
                files.append((os.path.relpath(p, dest), st.st_size))
                size += st.st_size
    files.sort()
    truth = {"entries": entries, "files": len(files), "bytes": size,
             "big": "big/random.bin", "big_bytes": n}
    # the random-read plan: 10k (file, 4 KiB-aligned offset) over files of at least 4 KiB
    rnd = random.Random(2)
    pool = [f for f in files if f[1] >= 4096]
    plan = []
    for _ in range(RANDOM_READS):
        rel, sz = rnd.choice(pool)
        plan.append((rel, rnd.randrange(0, sz - 4096 + 1)))
    h = hashlib.sha256()
    for rel, off in plan:
        with open(dest / rel, "rb") as f:
            f.seek(off)
            h.update(f.read(4096))
    truth["plan"] = plan
    truth["plan_sha256"] = h.hexdigest()
    rnd = random.Random(3)
    truth["open_close"] = [rnd.choice(files)[0] for _ in range(OPEN_CLOSE)]
    truth["one_percent"] = sorted(rnd.sample([f[0] for f in files], max(len(files) // 100, 1)))
    truth["one_percent_bytes"] = sum(s for r, s in files if r in set(truth["one_percent"]))
    truth_file.write_text(json.dumps(truth))
    return truth


# ---- packing --------------------------------------------------------------------------------

def timed(cmd: list[str], **kw) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    return time.perf_counter() - t


def pack(work: Path, corpus: Path) -> dict:
    """Pack the corpus for every tool (once); returns {name: (seconds, bytes)}."""
    out_file = work / "packed.json"
    if out_file.exists():
        return json.loads(out_file.read_text())
    packs = {}
    img = BIN / "pynydus-image"
    for v, comp in (("6", "zstd"), ("6", "lz4_block"), ("5", "lz4_block"), ("5", "zstd")):
        d = work / f"nydus-v{v}-{comp}"
        shutil.rmtree(d, ignore_errors=True)
        s = timed([str(img), "create", "--fs-version", v, "--compressor", comp, "--bootstrap",
                   str(d / "bootstrap"), "--blob-dir", str(d / "blobs"), str(corpus)])
        size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
        packs[f"pynydus-image v{v} {comp}"] = (s, size)
    sq = work / "corpus.sqfs"
    sq.unlink(missing_ok=True)
    s = timed(["mksquashfs", str(corpus), str(sq), "-comp", "lz4", "-noappend", "-no-progress",
               "-quiet"])
    packs["mksquashfs lz4"] = (s, sq.stat().st_size)
    ero = work / "corpus.erofs"
    ero.unlink(missing_ok=True)
    s = timed(["mkfs.erofs", str(ero), str(corpus)])
    packs["mkfs.erofs (uncompressed)"] = (s, ero.stat().st_size)
    tar = work / "corpus.tar"
    tar.unlink(missing_ok=True)
    s = timed(["tar", "-C", str(corpus), "-cf", str(tar), "."])
    for old in work.glob("corpus.tar.index*"):
        old.unlink()
    t = time.perf_counter()  # ratarmount's index, built once (it is reused by later mounts)
    mnt = work / "mnt-index"
    mnt.mkdir(exist_ok=True)
    subprocess.run([str(BIN / "ratarmount"), str(tar), str(mnt)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
    packs["tar (+ ratarmount index)"] = (s + time.perf_counter() - t, tar.stat().st_size)
    out_file.write_text(json.dumps(packs))
    return packs


# ---- servers --------------------------------------------------------------------------------

def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


class Servers:
    """pynydus-blob-server and docker-registry (with the v6 zstd blob pushed) on 127.0.0.1."""

    def __init__(self, work: Path, blob_dir: Path) -> None:
        self.procs = []
        self.blob_port = free_port()
        self.procs.append(subprocess.Popen(
            [str(BIN / "pynydus-blob-server"), "--blobsdir", str(blob_dir), "--address",
             "127.0.0.1", "--port", str(self.blob_port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(self.blob_port)
        self.registry_port = free_port()
        root = work / "registry"
        root.mkdir(exist_ok=True)
        (root / "config.yml").write_text(
            f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {root}/data\nhttp:\n  addr: 127.0.0.1:{self.registry_port}\n")
        self.procs.append(subprocess.Popen(["docker-registry", "serve", str(root / "config.yml")],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(self.registry_port)
        self.blob = next(blob_dir.iterdir())
        base = f"http://127.0.0.1:{self.registry_port}/v2/bench/corpus/blobs/"
        try:
            urllib.request.urlopen(urllib.request.Request(base + "sha256:" + self.blob.name,
                                                          method="HEAD"), timeout=5)
        except Exception:  # noqa: BLE001 - not there yet: push it (monolithic upload)
            r = urllib.request.urlopen(urllib.request.Request(base + "uploads/", method="POST"),
                                       timeout=10)
            loc = r.headers["Location"]
            loc = loc if loc.startswith("http") else f"http://127.0.0.1:{self.registry_port}{loc}"
            sep = "&" if "?" in loc else "?"
            with open(self.blob, "rb") as f:
                req = urllib.request.Request(f"{loc}{sep}digest=sha256:{self.blob.name}", data=f,
                                             method="PUT", headers={
                                                 "Content-Type": "application/octet-stream",
                                                 "Content-Length": str(self.blob.stat().st_size)})
                urllib.request.urlopen(req, timeout=600)

    def curl_seconds(self, dest: Path) -> float:
        """Download the whole blob from the registry with curl."""
        url = (f"http://127.0.0.1:{self.registry_port}/v2/bench/corpus/blobs/sha256:"
               f"{self.blob.name}")
        t = time.perf_counter()
        subprocess.run(["curl", "-sSfL", "-o", str(dest), url], check=True)
        return time.perf_counter() - t

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
            p.wait(timeout=10)


# ---- tools under test -----------------------------------------------------------------------

def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def mounted(path: Path) -> bool:
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == real for line in f)


@dataclass
class Tool:
    name: str
    argv: list[str] | None  # None: the plain directory
    kernel: bool = False  # a kernel mount (no daemon)
    api: Path | None = None
    cache: Path | None = None
    proc: subprocess.Popen | None = None
    notes: list[str] = field(default_factory=list)

    def mount(self, mnt: Path) -> float:
        """Start it; seconds from exec to a mount that answers."""
        if self.cache is not None:
            shutil.rmtree(self.cache, ignore_errors=True)
        if self.api is not None:
            self.api.unlink(missing_ok=True)
        argv = [a.replace("{mnt}", str(mnt)) for a in self.argv]
        t = time.perf_counter()
        if self.kernel:
            subprocess.run(argv, check=True)
        else:
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while not mounted(mnt):
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.0005)
        os.stat(mnt)
        return time.perf_counter() - t

    def peak_rss(self) -> int | None:
        if self.proc is None:
            return None
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return None

    def metrics(self) -> dict:
        if self.api is None:
            return {}
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(self.api))
        s.sendall(b"GET /api/v1/metrics/blobcache HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        s.close()
        cache = json.loads(data.partition(b"\r\n\r\n")[2])
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(self.api))
        s.sendall(b"GET /api/v1/metrics/backend HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        s.close()
        backend = json.loads(data.partition(b"\r\n\r\n")[2])
        return {"bytes_fetched": backend["read_amount_total"], "requests": backend["read_count"],
                "cache_hits": cache["whole_hits"]}

    def unmount(self, mnt: Path) -> None:
        if self.kernel:
            subprocess.run(["umount", str(mnt)], check=True)
            return
        subprocess.run(["umount", str(mnt)], check=False)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait()
            self.proc = None
        if mounted(mnt):
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def tools(work: Path, corpus: Path, servers: Servers) -> list[Tool]:
    nyd = work / "nydus-v6-zstd"
    v5 = work / "nydus-v5-lz4_block"
    # the drop-in (make dropin), what a node runs, when built; else the venv's console script
    dropin = ROOT / "dist/nydusd"
    d = str(dropin if dropin.exists() else BIN / "pynydusd")
    common = ["--no-prefetch", "--log-level", "warn"]
    out = [
        Tool("plain dir", None),
        Tool("kernel EROFS (loop)", ["mount", "-t", "erofs", "-o", "loop,ro",
                                     str(work / "corpus.erofs"), "{mnt}"], kernel=True),
        Tool("bindfs", ["bindfs", "-f", "--no-allow-other", str(corpus), "{mnt}"]),
        Tool("squashfuse_ll", ["squashfuse_ll", "-f", str(work / "corpus.sqfs"), "{mnt}"]),
        Tool("ratarmount", [str(BIN / "ratarmount"), "-f", str(work / "corpus.tar"), "{mnt}"]),
    ]
    for label, img, backend in (
            ("pynydusd v6 zstd, local blobs", nyd, str(nyd / "blobs")),
            ("pynydusd v5 lz4, local blobs", v5, str(v5 / "blobs")),
            ("pynydusd v6 zstd, blob server", nyd, f"http://127.0.0.1:{servers.blob_port}/bench"),
            ("pynydusd v6 zstd, docker-registry", nyd,
             f"http://127.0.0.1:{servers.registry_port}/bench/corpus")):
        slug = label.split(",")[0].replace(" ", "-") + str(len(out))
        api = work / f"{slug}.sock"
        cache = work / f"{slug}.cache"
        out.append(Tool(label, [d, "--bootstrap", str(img / "bootstrap"), "--backend", backend,
                                "--cache-dir", str(cache), "--apisock", str(api), *common,
                                "{mnt}"], api=api, cache=cache))
    return out


# ---- workloads ------------------------------------------------------------------------------

class WrongAnswer(Exception):
    pass


def walk(mnt: Path, truth: dict) -> float:
    t = time.perf_counter()
    out = subprocess.run(["find", str(mnt), "-printf", "%y %s\n"], check=True,
                         capture_output=True).stdout
    s = time.perf_counter() - t
    lines = out.splitlines()
    size = sum(int(x.split()[1]) for x in lines if x.startswith(b"f "))
    if len(lines) != truth["entries"] or size != truth["bytes"]:
        raise WrongAnswer(f"walk saw {len(lines)} entries / {size} bytes, expected "
                          f"{truth['entries']} / {truth['bytes']}")
    return s


def read_all(mnt: Path, truth: dict) -> float:
    t = time.perf_counter()
    out = subprocess.run(f"find {mnt} -type f -print0 | xargs -0 cat | wc -c", shell=True,
                         check=True, capture_output=True).stdout
    s = time.perf_counter() - t
    if int(out) != truth["bytes"]:
        raise WrongAnswer(f"read {int(out)} bytes, expected {truth['bytes']}")
    return s


def dd(mnt: Path, truth: dict) -> float:
    t = time.perf_counter()
    r = subprocess.run(["dd", f"if={mnt / truth['big']}", "of=/dev/null", "bs=1M"], check=True,
                       capture_output=True, text=True)
    s = time.perf_counter() - t
    copied = int(r.stderr.strip().splitlines()[-1].split()[0])
    if copied != truth["big_bytes"]:
        raise WrongAnswer(f"dd copied {copied} bytes")
    return s


RANDOM_READER = r"""
import hashlib, json, os, sys, time
mnt, plan_file = sys.argv[1], sys.argv[2]
plan = json.load(open(plan_file))
fds = {}
t = time.perf_counter()
h = hashlib.sha256()
for rel, off in plan:
    fd = fds.get(rel)
    if fd is None:
        fd = fds[rel] = os.open(os.path.join(mnt, rel), os.O_RDONLY)
    h.update(os.pread(fd, 4096, off))
s = time.perf_counter() - t
print(s, h.hexdigest())
"""

OPENER = r"""
import json, os, sys, time
mnt, names = sys.argv[1], json.load(open(sys.argv[2]))
paths = [os.path.join(mnt, n) for n in names]
t = time.perf_counter()
for p in paths:
    os.close(os.open(p, os.O_RDONLY))
print((time.perf_counter() - t) / len(paths))
"""


def random_reads(mnt: Path, truth: dict, plan_file: Path) -> float:
    out = subprocess.run([sys.executable, "-c", RANDOM_READER, str(mnt), str(plan_file)],
                         check=True, capture_output=True, text=True).stdout.split()
    if out[1] != truth["plan_sha256"]:
        raise WrongAnswer("random 4 KiB reads returned wrong bytes")
    return float(out[0])


def open_close(mnt: Path, names_file: Path) -> float:
    return float(subprocess.run([sys.executable, "-c", OPENER, str(mnt), str(names_file)],
                                check=True, capture_output=True, text=True).stdout)


def one_percent(mnt: Path, truth: dict) -> int:
    got = 0
    for rel in truth["one_percent"]:
        with open(mnt / rel, "rb") as f:
            while block := f.read(1 << 20):
                got += len(block)
    if got != truth["one_percent_bytes"]:
        raise WrongAnswer(f"1% read got {got} bytes")
    return got


# ---- the run --------------------------------------------------------------------------------

def run_tool(tool: Tool, corpus: Path, mnt: Path, truth: dict, files: dict) -> dict:
    """All workloads for one tool, one round: {workload: value}."""
    r: dict = {}
    if tool.argv is None:
        target = corpus
    else:
        r["exec → mount ready (s)"] = tool.mount(mnt)
        target = mnt
    try:
        drop_caches()
        r["stat walk, cold (s)"] = walk(target, truth)
        r["stat walk, warm (s)"] = walk(target, truth)
        r["open+close, warm (µs)"] = open_close(target, files["names"]) * 1e6
        drop_caches()
        r["read every file, cold (MB/s)"] = truth["bytes"] / read_all(target, truth) / 1e6
        r["read every file, warm (MB/s)"] = truth["bytes"] / read_all(target, truth) / 1e6
        if tool.api is not None:
            m = tool.metrics()
            r["bytes fetched ÷ bytes read, full read"] = m["bytes_fetched"] / truth["bytes"]
            r["requests, full read"] = m["requests"]
            r["chunk cache hits, full reads (cold + warm)"] = m["cache_hits"]
        rss = tool.peak_rss()
        if rss is not None:
            r["daemon peak RSS (MiB)"] = rss / (1 << 20)
    finally:
        if tool.argv is not None:
            tool.unmount(mnt)
    # data workloads each on a fresh mount (and fresh cache): cold means cold
    for key in ("dd 256 MiB", "random 4 KiB reads"):
        if tool.argv is not None:
            tool.mount(mnt)
        try:
            drop_caches()
            if key == "dd 256 MiB":
                n = truth["big_bytes"] / 1e6
                r["dd big file, cold (MB/s)"] = n / dd(target, truth)
                r["dd big file, warm (MB/s)"] = n / dd(target, truth)
            else:
                r["random 4 KiB reads, cold (reads/s)"] = RANDOM_READS / random_reads(
                    target, truth, files["plan"])
                r["random 4 KiB reads, warm (reads/s)"] = RANDOM_READS / random_reads(
                    target, truth, files["plan"])
            rss = tool.peak_rss()
            if rss is not None:
                r["daemon peak RSS (MiB)"] = max(r.get("daemon peak RSS (MiB)", 0), rss / (1 << 20))
        finally:
            if tool.argv is not None:
                tool.unmount(mnt)
    if tool.api is not None and "local" not in tool.name:
        tool.mount(mnt)
        try:
            drop_caches()
            got = one_percent(mnt, truth)
            m = tool.metrics()
            r["bytes fetched ÷ bytes read, 1% of files"] = m["bytes_fetched"] / got
        finally:
            tool.unmount(mnt)
    return r


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", choices=sorted(PROFILES), default="full")
    p.add_argument("--rounds", type=int, default=0, help="override the profile's round count")
    p.add_argument("--work", type=Path, default=Path("/var/tmp/pynydusd-bench"))
    p.add_argument("--only", help="comma-separated substrings of tool names to run")
    p.add_argument("--out", type=Path, default=HERE)
    p.add_argument("--prepare-only", action="store_true", help="build the corpus and pack it")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        p.error("run as root (mounts, loop devices, drop_caches)")
    prof = PROFILES[args.profile]
    rounds = args.rounds or prof["rounds"]
    work = args.work / args.profile
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus"
    print(f"corpus ({args.profile}) in {corpus} ...", flush=True)
    truth = make_corpus(corpus, prof)
    print(f"  {truth['entries']} entries, {truth['files']} files, {truth['bytes'] / 1e6:.0f} MB",
          flush=True)
    print("packing ...", flush=True)
    packs = pack(work, corpus)
    for k, (s, size) in packs.items():
        print(f"  {k:34s} {s:7.1f} s {size / 1e6:8.0f} MB", flush=True)
    if args.prepare_only:
        return 0
    files = {"plan": work / "plan.json", "names": work / "names.json"}
    files["plan"].write_text(json.dumps(truth["plan"]))
    files["names"].write_text(json.dumps(truth["open_close"]))
    servers = Servers(work, work / "nydus-v6-zstd/blobs")
    mnt = work / "mnt"
    mnt.mkdir(exist_ok=True)
    if mounted(mnt):
        subprocess.run(["umount", "-l", str(mnt)], check=False)
    all_tools = tools(work, corpus, servers)
    if (ROOT / "dist/nydusd").exists():  # unpack the drop-in once, outside the timed mounts
        subprocess.run([str(ROOT / "dist/nydusd"), "--version"], check=True,
                       stdout=subprocess.DEVNULL)
    if args.only:
        keys = [k.strip() for k in args.only.split(",")]
        all_tools = [t for t in all_tools if any(k in t.name for k in keys) or t.argv is None]
    results: dict[str, list[dict]] = {t.name: [] for t in all_tools}
    errors: list[str] = []
    curl: list[float] = []
    try:
        for rnd in range(rounds):
            order = all_tools[rnd % len(all_tools):] + all_tools[:rnd % len(all_tools)]
            with tempfile.TemporaryDirectory(dir=work) as tmp:
                drop_caches()
                curl.append(servers.curl_seconds(Path(tmp) / "blob"))
            for tool in order:
                print(f"round {rnd + 1}/{rounds}: {tool.name} ...", flush=True)
                try:
                    r = run_tool(tool, corpus, mnt, truth, files)
                except WrongAnswer as e:
                    errors.append(f"round {rnd + 1}, {tool.name}: WRONG ANSWER: {e}")
                    print("  " + errors[-1], flush=True)
                    continue
                except (RuntimeError, subprocess.CalledProcessError, OSError) as e:
                    errors.append(f"round {rnd + 1}, {tool.name}: failed: {e}")
                    print("  " + errors[-1], flush=True)
                    continue
                results[tool.name].append(r)
                print("  " + ", ".join(f"{k.split(' (')[0]} {v:.3g}" for k, v in r.items()),
                      flush=True)
    finally:
        servers.stop()
    report = {"profile": args.profile, "rounds": rounds, "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                 time.gmtime()),
              "machine": machine(), "corpus": {k: truth[k] for k in ("entries", "files", "bytes")},
              "packs": packs, "results": results, "errors": errors, "curl_seconds": curl}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=1))
    from tools.bench.report import write_report

    write_report(report, args.out)
    print(f"wrote {args.out / 'results.md'} and results.png", flush=True)
    return 1 if errors else 0


def machine() -> str:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM; Linux {platform.release()}; "
            f"Python {platform.python_version()}")


if __name__ == "__main__":
    sys.exit(main())
