"""`layercomposer serve`: the editor's web app and API."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import LayerComposerError
from .common import add_memory_arguments, check_model_name, default_model, load_options, load_pipeline


def add_serve_parser(sub: Any) -> None:
    """`serve`."""
    srv = sub.add_parser("serve", help="start the editor (web app + API)",
                         description="Serve the layered-canvas editor and its JSON API (docs at /docs).")
    srv.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    srv.add_argument("--port", type=int, default=7860)
    srv.add_argument("--model", default=None, help="model name or directory (default: demo)")
    srv.add_argument("--outputs", default="outputs", help="folder for results and uploads (default outputs/)")
    srv.add_argument("--token", default=None, help="require this bearer token on every API call")
    srv.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                     help="a host name the editor may be reached by besides localhost, 127.0.0.1, [::1] and the "
                     "address it listens on (other Host headers are refused: DNS rebinding); repeatable")
    srv.add_argument("--max-tokens", type=int, default=None,
                     help="most tokens (noisy + condition) a job may have; larger canvases are refused "
                     "(default 16384)")
    srv.add_argument("--queue", type=int, default=8, help="most jobs waiting at once (more get 429)")
    srv.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    srv.add_argument("--refine-model", default=None,
                     help="model of the editor's refine mode (FLUX.1 Kontext folder / hub id; default: "
                     "demo-collage when installed)")
    add_memory_arguments(srv, dtype=False, vae_tiling=False)
    srv.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    if args.token is not None and not args.token.strip():
        raise LayerComposerError("--token: must not be empty (leave it out for no token)")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise LayerComposerError(f"--max-tokens: must be at least 1, got {args.max_tokens}")
    model = args.model or default_model()
    check_model_name(model)
    if args.refine_model:
        check_model_name(args.refine_model)
    import uvicorn

    from ..server.app import ServerSettings, create_app, uvicorn_config
    from ..settings import DEFAULT_MAX_TOKENS

    if not 1 <= args.port <= 65535:
        raise LayerComposerError(f"--port: must be 1..65535, got {args.port}")
    if args.queue < 1:
        raise LayerComposerError(f"--queue: must be at least 1, got {args.queue}")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"layercomposer: warning: listening on {args.host}: other machines can reach this editor"
              + ("" if args.token else " and there is no --token"), file=sys.stderr)
    from ..models.registry import shipped_models

    refine_model = args.refine_model or ("demo-collage" if "demo-collage" in shipped_models() else None)
    settings = ServerSettings(model=model, outputs=Path(args.outputs), token=args.token, max_queue=args.queue,
                              device=args.device, refine_model=refine_model, allowed_hosts=tuple(args.allow_host),
                              max_tokens=args.max_tokens or DEFAULT_MAX_TOKENS)
    load = load_options(args)
    loader = None
    if load.active or args.offload != "none" or args.attention_backend:
        # The editor's model with the low-memory flags (its refine model loads as before).
        def loader() -> Any:
            return load_pipeline(model, args.device, "auto", args.offload, False, load, args.attention_backend)

    print(f"layercomposer editor: http://{args.host}:{args.port}/  (model {model}, outputs {args.outputs})",
          file=sys.stderr)
    uvicorn.Server(uvicorn_config(create_app(settings, load_pipeline=loader), args.host, args.port)).run()
    return 0
