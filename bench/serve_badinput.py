#!/usr/bin/env python3
"""Bad input over HTTP (issue 23): a well-behaved client's latency and the server's memory,
alone and while attackers run.

Starts `fathom serve` on a small index, then runs four phases of --duration seconds each:
  alone   one keep-alive client sending searches back to back (p50/p99 latency, statuses);
  slow    the same client while only the slow connections (slowloris, slow body, silent) are open;
  attack  the same client while every attacker runs:
            slowloris  --slowloris connections trickling request headers a byte a second
                       (reconnecting when the server closes them),
            slow body  --slow-bodies connections trickling a request body a byte a second,
            silent     --silent connections that send nothing,
            huge       a client streaming --huge-mib MiB chunked bodies (413 at --max-body),
            deep       a client posting ~1 MiB of '[' (400 nestingTooDeep) back to back,
            nan        a client posting vectors with bare NaN (400 nonFiniteValue);
  after   the client alone again, attackers stopped.
The server's VmRSS and VmHWM (/proc/PID/status) are sampled every 0.2 s throughout; `uptime`
is recorded before and after (the machine may be shared: compare phases of one run, not runs).
Writes JSON to bench/results/serve-badinput-<tag>.json. Python 3 standard library only.

  bench/serve_badinput.py                                   # 20,000 x 64 synthetic index, 20 s phases
  bench/serve_badinput.py --duration 5 --slowloris 200      # short run
  bench/serve_badinput.py --index DIR --queries Q.fbin --serve-args "--idle-timeout 3 --body-timeout 3"
"""
import argparse
import http.client
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_fbin(path, limit):
    with open(path, "rb") as f:
        n, d = struct.unpack("<II", f.read(8))
        return [list(struct.unpack("<%df" % d, f.read(4 * d))) for _ in range(min(n, limit))]


def proc_status(pid):
    """VmRSS and VmHWM of `pid` in KiB."""
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0])
    return out


def uptime():
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def percentile(xs, p):
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100.0 * (len(s) - 1))))]


class Sampler(threading.Thread):
    """Samples the server's memory every 0.2 s, tagging each sample with the current phase."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.phase, self.samples, self.stop = pid, "start", [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                st = proc_status(self.pid)
            except OSError:
                return
            self.samples.append({"t": time.time(), "phase": self.phase, "rss_kib": st["VmRSS"], "hwm_kib": st["VmHWM"]})
            self.stop.wait(0.2)


def good_client(port, bodies, seconds):
    """Searches back to back on one keep-alive connection for `seconds`: latencies (ms) and statuses."""
    lat, statuses, errors = [], {}, 0
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    end = time.time() + seconds
    i = 0
    while time.time() < end:
        body = bodies[i % len(bodies)]
        i += 1
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/v1/indexes/bench/search", body=body, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
        except (OSError, http.client.HTTPException):
            errors += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            continue
        lat.append((time.perf_counter() - t0) * 1000)
        statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
    conn.close()
    return {"requests": len(lat), "errors": errors, "statuses": statuses,
            "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "max_ms": max(lat) if lat else None,
            "mean_ms": sum(lat) / len(lat) if lat else None}


class Attack:
    """All attackers; each counts what it did in `stats` (under `lock`)."""

    def __init__(self, port, args, floods):
        self.port, self.args, self.floods, self.stop = port, args, floods, threading.Event()
        self.lock = threading.Lock()
        self.stats = {"slowloris_opened": 0, "slowloris_closed_by_server": 0, "slowloris_lifetimes_s": [],
                      "slow_body_opened": 0, "slow_body_closed_by_server": 0, "slow_body_lifetimes_s": [],
                      "silent_opened": 0, "silent_closed_by_server": 0, "silent_lifetimes_s": [],
                      "connect_failures": 0, "huge": {}, "deep": {}, "nan": {}}
        self.threads = []

    def count(self, key, by=1):
        with self.lock:
            self.stats[key] += by

    def status(self, kind, status):
        with self.lock:
            self.stats[kind][status] = self.stats[kind].get(status, 0) + 1

    def connect(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        s.setblocking(False)
        return s

    def trickler(self, kind, prefix, payload):
        """Sends `prefix` at once, then `payload` a byte per second; reconnects when closed."""
        while not self.stop.is_set():
            try:
                s = self.connect()
            except OSError:
                self.count("connect_failures")
                self.stop.wait(0.5)
                continue
            self.count(kind + "_opened")
            t0 = time.time()
            closed = False
            try:
                if prefix:
                    s.send(prefix)
                i = 0
                while not self.stop.is_set():
                    if payload:
                        s.send(payload[i % len(payload):i % len(payload) + 1])
                        i += 1
                    if self.stop.wait(1.0):
                        break
                    try:
                        if s.recv(65536) == b"":
                            closed = True
                            break
                    except BlockingIOError:
                        pass
            except OSError:
                closed = True
            finally:
                s.close()
            if closed:
                self.count(kind + "_closed_by_server")
                with self.lock:
                    self.stats[kind + "_lifetimes_s"].append(round(time.time() - t0, 2))

    def flood(self, kind, make_request):
        """Sends requests built by `make_request` back to back on fresh connections."""
        while not self.stop.is_set():
            try:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=30)
                make_request(s)
                resp = s.recv(4096).split(b"\r\n", 1)[0].decode("latin-1")
                self.status(kind, resp.split(" ")[1] if resp.startswith("HTTP/") else "closed")
                s.close()
            except OSError as e:
                self.status(kind, type(e).__name__)

    def huge(self, s):
        head = (b"POST /v1/indexes/bench/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")
        s.sendall(head)
        chunk = b"0.123456789," * (1 << 16)
        chunk = (b"%x\r\n" % len(chunk)) + chunk + b"\r\n"
        sent = 0
        try:
            s.sendall(b"b\r\n{\"vector\":[\r\n")  # 0xb bytes: {"vector":[
            while sent < self.args.huge_mib << 20 and not self.stop.is_set():
                s.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass  # the server answered 413 and closed: read the answer below

    def deep(self, s):
        body = b"{\"vector\": " + b"[" * (1 << 20) + b"}"
        s.sendall(b"POST /v1/indexes/bench/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)

    def nan(self, s):
        body = json.dumps({"vectors": [[0.5] * self.args.dim] * 8, "k": 10}).replace("0.5]", "NaN]", 1).encode()
        s.sendall(b"POST /v1/indexes/bench/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)

    def start(self):
        a = self.args
        head = b"POST /v1/indexes/bench/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Slow: " + b"a" * 4000
        body_head = (b"POST /v1/indexes/bench/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000000\r\n\r\n{\"vector\": [")
        for _ in range(a.slowloris):
            self.threads.append(threading.Thread(target=self.trickler, args=("slowloris", b"", head), daemon=True))
        for _ in range(a.slow_bodies):
            self.threads.append(threading.Thread(target=self.trickler, args=("slow_body", body_head, b"0.1,"), daemon=True))
        for _ in range(a.silent):
            self.threads.append(threading.Thread(target=self.trickler, args=("silent", b"", b""), daemon=True))
        for kind, fn in (("huge", self.huge), ("deep", self.deep), ("nan", self.nan)) if self.floods else ():
            self.threads.append(threading.Thread(target=self.flood, args=(kind, fn), daemon=True))
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=40)
        st = dict(self.stats)
        for k in ("slowloris", "slow_body", "silent"):
            lt = st.pop(k + "_lifetimes_s")
            st[k + "_lifetime_s_p50"] = percentile(lt, 50)
            st[k + "_lifetime_s_max"] = max(lt) if lt else None
        return st


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fathom", help="the fathom binary (default: .build/release/fathom, else .build/debug/fathom)")
    ap.add_argument("--index", help="an index directory (else a synthetic one is built under bench/work/badinput)")
    ap.add_argument("--queries", help="queries .fbin for --index")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--duration", type=float, default=20, help="seconds per phase (at most 300)")
    ap.add_argument("--slowloris", type=int, default=200)
    ap.add_argument("--slow-bodies", type=int, default=50)
    ap.add_argument("--silent", type=int, default=50)
    ap.add_argument("--huge-mib", type=int, default=64)
    ap.add_argument("--port", type=int, default=7791)
    ap.add_argument("--serve-args", default="", help="extra fathom serve options, e.g. \"--idle-timeout 5 --body-timeout 5\"")
    ap.add_argument("--tag", default=time.strftime("%Y%m%d-%H%M%S"))
    a = ap.parse_args()
    if not 0 < a.duration <= 300:
        sys.exit("serve_badinput: --duration must be in (0, 300]")
    os.chdir(ROOT)
    fathom = a.fathom or next((p for p in (".build/release/fathom", ".build/debug/fathom") if os.access(p, os.X_OK)), None)
    if not fathom:
        sys.exit("serve_badinput: no fathom binary: swift build -c release --product fathom, or --fathom PATH")
    work = "bench/work/badinput"
    os.makedirs(work, exist_ok=True)
    os.makedirs("bench/results", exist_ok=True)
    index, queries = a.index, a.queries
    if not index:
        index, queries = "%s/idx-%d-%d" % (work, a.n, a.dim), "%s/q-%d-%d.fbin" % (work, a.n, a.dim)
        if not os.path.exists(index + "/manifest.json"):
            base = "%s/base-%d-%d.fbin" % (work, a.n, a.dim)
            subprocess.run([fathom, "gen", "--n", str(a.n), "--dim", str(a.dim), "--queries", "200", "--out", base,
                            "--query-out", queries, "--quiet"], check=True)
            subprocess.run([fathom, "build", "--input", base, "--output", index, "--quiet"], check=True)
    if not queries:
        sys.exit("serve_badinput: --index needs --queries")
    rows = read_fbin(queries, 200)
    a.dim = len(rows[0])
    bodies = [json.dumps({"vector": [float("%.7g" % x) for x in r], "k": 10}) for r in rows]

    # Room for the attackers' sockets (and the server's, inherited).
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8192)), hard))
    except (ImportError, ValueError, OSError):
        pass
    load_before = uptime()
    cmd = [fathom, "serve", "--index", "bench=" + index, "--listen", "127.0.0.1:%d" % a.port, "--log-level", "warning"] + a.serve_args.split()
    log = open("%s/serve-%s.log" % (work, a.tag), "w")
    server = subprocess.Popen(cmd, stderr=log)
    result = {}
    try:
        for _ in range(600):
            try:
                c = http.client.HTTPConnection("127.0.0.1", a.port, timeout=2)
                c.request("GET", "/readyz")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            sys.exit("serve_badinput: the server did not become ready (log: %s/serve-%s.log)" % (work, a.tag))
        sampler = Sampler(server.pid)
        sampler.start()
        phases = {}
        sampler.phase = "alone"
        phases["alone"] = good_client(a.port, bodies, a.duration)
        attackers = {}
        for phase, floods in (("slow", False), ("attack", True)):
            attack = Attack(a.port, a, floods)
            sampler.phase = phase
            attack.start()
            time.sleep(min(2.0, a.duration / 4))  # let the attackers connect
            phases[phase] = good_client(a.port, bodies, a.duration)
            sampler.phase = "stopping"
            attackers[phase] = attack.finish()
        sampler.phase = "after"
        phases["after"] = good_client(a.port, bodies, a.duration)
        sampler.stop.set()
        sampler.join()
        mem = {}
        for ph in ("alone", "slow", "attack", "after"):
            s = [x for x in sampler.samples if x["phase"] == ph]
            if s:
                mem[ph] = {"rss_kib_first": s[0]["rss_kib"], "rss_kib_max": max(x["rss_kib"] for x in s),
                           "rss_kib_last": s[-1]["rss_kib"], "hwm_kib_last": s[-1]["hwm_kib"], "samples": len(s)}
        result = {
            "bench": "serve_badinput", "preliminary": True,
            "note": "shared machine; compare the phases of this run, not runs",
            "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
            "cpus": os.cpu_count(), "fathom": fathom, "command": cmd, "index": index, "dim": a.dim,
            "duration_s_per_phase": a.duration,
            "attackers": {"slowloris": a.slowloris, "slow_bodies": a.slow_bodies, "silent": a.silent,
                          "huge_mib": a.huge_mib, "deep_body_bytes": (1 << 20) + 12, "nan": 1},
            "uptime_before": load_before, "uptime_after": uptime(),
            "client": phases, "attack_stats": attackers, "memory": mem,
            "p99_over_alone": {ph: phases[ph]["p99_ms"] / phases["alone"]["p99_ms"]
                               for ph in ("slow", "attack", "after") if phases["alone"]["p99_ms"] and phases[ph]["p99_ms"]},
        }
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    out = "bench/results/serve-badinput-%s.json" % a.tag
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(json.dumps({k: result[k] for k in ("client", "memory", "p99_over_alone")}, indent=2))
    print("wrote " + out, file=sys.stderr)


if __name__ == "__main__":
    main()
