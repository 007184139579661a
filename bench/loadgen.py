"""HTTP load for serve_load.py: wrk when it is installed, else a small asyncio client.

Each request is `POST /predict/ {"uuid": "u<random 0..N-1>", "data": ...}` on a keep-alive
connection. Both report requests/s, latency percentiles, failures and the generator's own
CPU use, so a reader can tell whether the generator was the bottleneck.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEXT = "what is the weather in Paris tomorrow"
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local heads = %(heads)d
local prefix = "%(prefix)s"
local data = '%(data)s'
local repeated = %(repeated)s
local function text()
  if repeated < 0 then return data end
  if math.random() < repeated then
    return '"' .. string.format(COMMON, math.random(1, PHRASES)) .. '"'
  end
  return '"' .. string.format(UNIQUE, math.random(1, 1000000000)) .. '"'
end
request = function()
  local body = '{"uuid": "' .. prefix .. math.random(0, heads - 1) .. '", "data": ' .. text() .. '}'
  return wrk.format(nil, "/predict/", nil, body)
end
done = function(summary, latency, requests)
  io.write(string.format('RESULT {"requests": %%d, "duration_s": %%f, "non_2xx": %%d, ' ..
    '"socket_errors": %%d, "p50_ms": %%f, "p90_ms": %%f, "p99_ms": %%f, "max_ms": %%f}\\n',
    summary.requests, summary.duration / 1e6, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1e3, latency:percentile(90) / 1e3, latency:percentile(99) / 1e3,
    latency.max / 1e3))
end
"""


# Kinds of request data: "text" (one sentence every time), "vector" (768 numbers), and
# for the embedding cache "unique" (a new sentence each request) and "repeat50" (half the
# requests one of PHRASES common sentences, the rest new ones).
COMMON, UNIQUE, PHRASES = "play my usual playlist number %d", "what is the weather in town %d", 20
REPEATED = {"unique": 0.0, "repeat50": 0.5}


def payload(kind: str) -> str:
    return json.dumps([round(random.Random(0).uniform(-1, 1), 4)] * 768 if kind == "vector" else TEXT)


def wrk_script(heads: int, kind: str) -> str:
    lua = WRK_SCRIPT % {"heads": heads, "prefix": "u", "data": payload(kind),
                        "repeated": REPEATED.get(kind, -1)}
    return (lua.replace("COMMON", json.dumps(COMMON)).replace("UNIQUE", json.dumps(UNIQUE))
            .replace("PHRASES", str(PHRASES)))


def request_data(kind: str, rng: random.Random) -> str:
    """A new request's text for the kinds of REPEATED."""
    if rng.random() < REPEATED[kind]:
        return json.dumps(COMMON % rng.randint(1, PHRASES))
    return json.dumps(UNIQUE % rng.randint(1, 10**9))


def run(url: str, heads: int, connections: int, seconds: float, kind: str = "text",
        generator: str = "auto") -> dict:
    """One load point; `generator` is wrk, python or auto (wrk where installed)."""
    if generator == "auto":
        generator = "wrk" if shutil.which("wrk") else "python"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    if generator == "wrk":
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
            fh.write(wrk_script(heads, kind))
        out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
                              "-s", fh.name, url], capture_output=True, text=True, check=True).stdout
        Path(fh.name).unlink()
        result = json.loads(next(line[7:] for line in out.splitlines() if line.startswith("RESULT ")))
    else:
        out = subprocess.run([sys.executable, __file__, url, "--heads", str(heads), "--connections",
                              str(connections), "--seconds", str(seconds), "--kind", kind],
                             capture_output=True, text=True, check=True).stdout
        result = json.loads(out)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result.update(generator=generator, connections=connections, kind=kind,
                  rps=round(result["requests"] / result["duration_s"], 1),
                  generator_cpu_share=round(cpu / result["duration_s"], 3))
    return result


async def _client(host: str, port: int, heads: int, kind: str, deadline: float,
                  latencies: list, failures: list) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    rng = random.Random()
    fixed = None if kind in REPEATED else payload(kind)  # built once per connection
    while time.perf_counter() < deadline:
        data = fixed or request_data(kind, rng)
        body = f'{{"uuid": "u{rng.randrange(heads)}", "data": {data}}}'.encode()
        start = time.perf_counter()
        writer.write(b"POST /predict/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                     b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        await reader.readexactly(length)
        latencies.append(time.perf_counter() - start)
        if not head.startswith(b"HTTP/1.1 2"):
            failures.append(head.split(b"\r\n")[0])
    writer.close()


async def _python_load(url: str, heads: int, connections: int, seconds: float, kind: str) -> dict:
    host, port = url.split("//")[1].split(":")
    latencies: list[float] = []
    failures: list = []
    start = time.perf_counter()
    await asyncio.gather(*(_client(host, int(port), heads, kind, start + seconds,
                                   latencies, failures) for _ in range(connections)))
    duration = time.perf_counter() - start
    ordered = sorted(latencies) or [0.0]
    pick = lambda q: round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3, 3)
    return {"requests": len(latencies), "duration_s": duration, "non_2xx": len(failures),
            "socket_errors": 0, "p50_ms": pick(0.5), "p90_ms": pick(0.9), "p99_ms": pick(0.99),
            "max_ms": round(ordered[-1] * 1e3, 3)}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("url")
    p.add_argument("--heads", type=int, default=100)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--seconds", type=float, default=6)
    p.add_argument("--kind", default="text", choices=("text", "vector", *REPEATED))
    a = p.parse_args()
    print(json.dumps(asyncio.run(_python_load(a.url, a.heads, a.connections, a.seconds, a.kind))))
