"""Load test of `dgalign serve`: concurrent chat clients, micro-batching on vs off.

Starts a server on a free loopback port (or uses `--url`, loopback only), runs C concurrent
clients x R sequential chat requests each (short answers), and reports throughput (requests/s,
completion tokens/s), p50/p99 latency, the mean prompts per sampler call, and errors (must be 0).
A 429 (the server's queue is full, `--max-queue`) is retried after its Retry-After and counted.
Without `--url` it runs twice, `--max-batch 16` then `--max-batch 1`, and prints the ratio.

    python benchmarks/server_load.py [--model smollm2-135m-instruct | toy] [--clients 16] [--requests 8]
                                     [--max-tokens 16] [--timeout 900] [--url http://127.0.0.1:8000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import statistics
import sys
import time
from urllib.parse import urlparse

import httpx

from dgalign.server.launch import start_server, stop_server

PROMPTS = [
    "Name a fruit and say why you like it.",
    "Give me one tip for sleeping better.",
    "What is a good name for a cat?",
    "Describe the sea in one sentence.",
    "Suggest a quick breakfast.",
    "Say something kind to a friend.",
    "What should I read this weekend?",
    "Explain what a cloud is, briefly.",
]


def is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def load(url: str, clients: int, requests: int, max_tokens: int, timeout: float) -> dict:
    """C clients x R requests; latency per request, tokens, errors; bounded by `timeout` seconds overall."""
    async with httpx.AsyncClient(
        base_url=url, timeout=timeout, limits=httpx.Limits(max_connections=clients)
    ) as http:
        model = (await http.get("/v1/models")).json()["data"][0]["id"]
        await http.post(
            "/v1/chat/completions",
            json={  # warm-up, not timed
                "model": model,
                "messages": [{"role": "user", "content": PROMPTS[0]}],
                "max_tokens": 2,
            },
        )
        latencies: list[float] = []
        tokens, batches, errors = [], [], []
        rate_limited = 0

        async def client(c: int) -> None:
            nonlocal rate_limited
            for r in range(requests):
                body = {
                    "model": model,
                    "max_tokens": max_tokens,
                    "messages": [{"role": "user", "content": PROMPTS[(c + r) % len(PROMPTS)]}],
                }
                start = time.perf_counter()
                try:
                    resp = await http.post("/v1/chat/completions", json=body)
                    while resp.status_code == 429:  # queue full: wait as told, then ask again
                        rate_limited += 1
                        await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))
                        resp = await http.post("/v1/chat/completions", json=body)
                except httpx.HTTPError as err:
                    errors.append(type(err).__name__)
                    continue
                if resp.status_code != 200:
                    errors.append(f"{resp.status_code}: {resp.text[:200]}")
                    continue
                latencies.append(time.perf_counter() - start)
                out = resp.json()
                tokens.append(out["usage"]["completion_tokens"])
                batches.append(out["dgalign"]["batch_prompts"])

        start = time.perf_counter()
        try:
            await asyncio.wait_for(asyncio.gather(*(client(c) for c in range(clients))), timeout)
        except TimeoutError:
            errors.append(f"overall timeout of {timeout} s")
        wall = time.perf_counter() - start
    done = len(latencies)
    ordered = sorted(latencies) or [float("nan")]
    return {
        "requests": done,
        "errors": clients * requests - done,  # failed or never finished
        "error_samples": errors[:3],
        "rate_limited": rate_limited,  # 429s retried (included in the latency of their request)
        "wall_s": round(wall, 2),
        "requests_per_s": round(done / wall, 2),
        "tokens_per_s": round(sum(tokens) / wall, 1),
        "p50_latency_s": round(statistics.median(ordered), 3),
        "p99_latency_s": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 3),
        "mean_batch_prompts": round(statistics.mean(batches), 2) if batches else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=8, help="sequential requests per client")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--timeout", type=float, default=900, help="overall seconds per run")
    ap.add_argument("--url", help="use this running server (loopback only) instead of starting one")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    runs = {}
    if args.url:
        if not is_loopback(args.url):
            sys.exit(f"--url must be a loopback address (127.0.0.1, ::1, localhost), got {args.url}")
        runs["given server"] = asyncio.run(
            load(args.url, args.clients, args.requests, args.max_tokens, args.timeout)
        )
    else:
        for name, max_batch in [("batching on (--max-batch 16)", 16), ("batching off (--max-batch 1)", 1)]:
            try:
                proc, url = start_server(["--model", args.model, "--max-batch", str(max_batch)], timeout=180)
            except RuntimeError as err:
                sys.exit(str(err))
            try:
                runs[name] = asyncio.run(
                    load(url, args.clients, args.requests, args.max_tokens, args.timeout)
                )
            finally:
                stop_server(proc, grace=30)
    result = {
        "model": args.model if not args.url else None,
        "clients": args.clients,
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "runs": runs,
    }
    if len(runs) == 2:
        on, off = runs.values()
        result["throughput_ratio"] = round(on["requests_per_s"] / off["requests_per_s"], 2)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{args.clients} clients x {args.requests} requests, max_tokens {args.max_tokens}, "
            f"model {args.model or 'at ' + args.url}"
        )
        for name, r in runs.items():
            print(
                f"  {name:<30} {r['requests_per_s']:7.2f} req/s  {r['tokens_per_s']:8.1f} tok/s  "
                f"p50 {r['p50_latency_s']:.2f} s  p99 {r['p99_latency_s']:.2f} s  "
                f"mean batch {r['mean_batch_prompts']}  errors {r['errors']}  429s {r['rate_limited']}"
            )
        if "throughput_ratio" in result:
            print(f"  throughput ratio (on / off): {result['throughput_ratio']:.2f}x")
    if any(r["errors"] for r in runs.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
