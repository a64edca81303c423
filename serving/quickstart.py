"""From nothing to a ranked table served by a real tritonserver, in one command:

    python -m serving.quickstart

Builds the demo model repository if `triton_repo/manifest.json` is missing (`export.build`, demo
preset, cpu target: random weights, so the scores show the plumbing, not a trained model), starts
tritonserver on free loopback ports (or the ones given), scores a demo user through gRPC, prints the
ranked table and stops the server. The server's log is removed when all went well and kept (its path
printed) when not.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console

from phoenix_runtime.manifest import MANIFEST
from serving.server import PROJECT_ROOT, ServerError, TritonServer

# What the quickstart builds when the repository has none: the same as `python -m export.build --preset demo`.
DEMO_BUILD = ["--preset", "demo", "--target", "cpu"]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m serving.quickstart", description=__doc__.split("\n\n")[0] + " "
                                 "Builds the demo repository if needed (random weights), starts the server, scores "
                                 "a demo user, prints the ranked table and stops the server.")
    ap.add_argument("--model-repository", default=str(PROJECT_ROOT / "triton_repo"),
                    help="model repository (default: triton_repo/ of the project); built if it has no manifest.json")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the repository even if it exists")
    ap.add_argument("--protocol", choices=("grpc", "http"), default="grpc", help="client protocol (default: grpc)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the demo user (default: 0)")
    for name in ("http", "grpc", "metrics"):
        ap.add_argument(f"--{name}-port", type=int, default=0,
                        help=f"{name if name != 'http' else 'HTTP'} port of the server on 127.0.0.1 (default: 0, any "
                             f"free port)")
    args = ap.parse_args(argv)
    console = Console()
    repo = Path(args.model_repository)
    if args.rebuild or not (repo / MANIFEST).exists():
        from export import build
        console.print(f"[bold]building the demo repository in {repo}[/] (python -m export.build "
                      f"{' '.join(DEMO_BUILD)}: random weights)")
        rc = build.main([*DEMO_BUILD, "--output", str(repo)])
        if rc:
            return rc
    from serving.cli import demo_request, print_table
    from serving.client import PhoenixClient

    server = TritonServer(repo, http_port=args.http_port or None, grpc_port=args.grpc_port or None,
                          metrics_port=args.metrics_port or None)
    console.print("starting tritonserver (loading and warming up the models) ...")
    t0 = time.monotonic()
    try:
        with server:            # stops the server; removes its log unless something failed
            console.print(f"tritonserver ready in {time.monotonic() - t0:.1f} s: gRPC {server.grpc_url}, "
                          f"HTTP {server.http_url}, metrics {server.metrics_url}")
            try:
                url = server.grpc_url if args.protocol == "grpc" else server.http_url
                with PhoenixClient(url, protocol=args.protocol) as client:
                    req = demo_request(client.actions, args.seed)
                    t0 = time.perf_counter()
                    result = client.score(**req)
                    ms = (time.perf_counter() - t0) * 1e3
            except Exception:
                console.print(f"[red]scoring failed[/]; the server log is kept: {server.log_path}")
                raise
            print_table(result, title=f"Phoenix ranking for demo user {req['user_id']} "
                                      f"({len(req['history'])} history items, {len(req['candidates'])} candidates; "
                                      f"random weights)")
            console.print(f"scored in {ms:.1f} ms through {args.protocol}; stopping the server.")
    except ServerError as e:
        console.print(f"[red]error:[/] {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
