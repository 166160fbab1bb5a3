"""``volsam models`` (registered architectures) and ``volsam weights list|fetch|path`` (official
checkpoints by name, volsam.hub)."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the registered models")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser(
        "weights",
        help="official checkpoints by name: list, fetch into the cache, path",
        description="Fetched weights are used by name: --model sam_med3d_turbo, Session('sam_med3d_turbo'). "
        "Cache: the Hugging Face cache (HF_HOME) for hub files, else $VOLSAM_CACHE or $XDG_CACHE_HOME/volsam.",
    )
    wsub = p.add_subparsers(dest="weights_command", required=True)
    p = wsub.add_parser("list", help="every official checkpoint: architecture, size, licence, source, fetched?")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_weights_list)
    p = wsub.add_parser("fetch", help="download (resumable) and verify by a strict load and the sha256")
    p.add_argument("name")
    p.add_argument("--no-verify", action="store_true", help="skip the strict load and digest check")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow full unpickling of a file you trust")
    p.set_defaults(func=_cmd_weights_fetch)
    p = wsub.add_parser("path", help="print the cached file of fetched weights (error if not fetched)")
    p.add_argument("name")
    p.set_defaults(func=_cmd_weights_path)


def _cmd_models(args: argparse.Namespace) -> int:
    from volsam.registry import list_models, model_spec

    # kind: "sam" = image encoded once per window, prompts decoded per click; "fusion" = early fusion, the
    # prompts are input channels and the network runs per interaction.
    for name in list_models():
        spec = model_spec(name)
        print(f"{name:16s} {spec.kind:6s} {spec.description}")
    return 0


def _cmd_weights_list(args: argparse.Namespace) -> int:
    from volsam.hub import cached_path, list_weights

    rows = []
    for w in list_weights():
        where = cached_path(w.name)
        rows.append(
            {
                "name": w.name,
                "architecture": w.architecture,
                "size": w.size,
                "licence": w.licence,
                "url": w.download_url(),
                "source": w.source,
                "sha256": w.sha256,
                "fetched": str(where) if where else None,
                "manual": w.manual,
                "note": w.note,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'name':30s} {'architecture':12s} {'size':8s} {'fetched':8s} licence")
    for r in rows:
        fetched = "yes" if r["fetched"] else ("manual" if r["manual"] else "no")
        print(f"{r['name']:30s} {r['architecture']:12s} {r['size'] or '?':8s} {fetched:8s} {r['licence']}")
        print(f"{'':30s} {r['url']}")
        if r["note"]:
            print(f"{'':30s} note: {r['note']}")
    return 0


def _cmd_weights_fetch(args: argparse.Namespace) -> int:
    from volsam.hub import fetch

    r = fetch(
        args.name, progress=not args.no_progress, verify=not args.no_verify, trust_checkpoint=args.trust_checkpoint
    )
    checked = {"volsam": "matches volsam's record", "hub": "matches the hub's LFS ETag"}.get(
        r.sha256_checked_against or "", "no digest recorded to compare with" if r.architecture else "not checked"
    )
    print(f"volsam: sha256 {r.sha256} ({checked})", file=sys.stderr)
    if r.architecture:
        print(f"volsam: loads strictly as {r.architecture}", file=sys.stderr)
    print(r.path)
    return 0


def _cmd_weights_path(args: argparse.Namespace) -> int:
    from volsam.hub import weights_path

    print(weights_path(args.name))
    return 0
