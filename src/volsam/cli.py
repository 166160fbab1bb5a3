"""Command-line interface: thin subcommands over the library.

Errors a user can cause (bad files, points, checkpoints) end with a one-line message on stderr and a
non-zero exit; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

if TYPE_CHECKING:
    from volsam.session import Session

EXIT_USAGE = 2
_err = Console(stderr=True, highlight=False, soft_wrap=True)


def _numbers(text: str, n: int, form: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        vals = ()
    if len(vals) != n:
        raise argparse.ArgumentTypeError(f"expected {form} ({n} comma-separated numbers), got {text!r}")
    return vals


def _point(text: str) -> tuple[float, ...]:
    return _numbers(text, 3, "a point as i,j,k")


def _box(text: str) -> tuple[float, ...]:
    return _numbers(text, 6, "a box as i0,j0,k0,i1,j1,k1")


class _Click(argparse.Action):
    """Collects --point and --negative into one ordered list, so refinements keep the order given."""

    def __call__(self, parser, namespace, values, option_string=None):
        clicks = list(getattr(namespace, "clicks", None) or [])
        clicks.append((values, self.const))
        namespace.clicks = clicks


def _add_model_args(p: argparse.ArgumentParser, *, required: bool = False, device: bool = True) -> None:
    """--model (+ --decoder-checkpoint, --trust-checkpoint and, unless ``device=False``, --device)."""
    if required:
        p.add_argument("--model", required=True, help="registered model, official weights name or checkpoint path")
    else:
        p.add_argument(
            "--model",
            default=None,
            help="registered model, official weights name (volsam weights list) or checkpoint path "
            "(default: shipped model)",
        )
    p.add_argument("--decoder-checkpoint", default=None, help="prompt encoder + decoder for an encoder-only file")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow full unpickling of a checkpoint you trust")
    _add_random_weights_arg(p)
    if device:
        p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


# Session keyword <- argparse destination, for the model and runtime options a command may have.
_SESSION_OPTIONS = {
    "clip": "clip",
    "decoder_checkpoint": "decoder_checkpoint",
    "trust_checkpoint": "trust_checkpoint",
    "precision": "precision",
    "attention": "attention",
    "compile": "compile",
    "memory": "memory",
    "attention_backend": "encoder_attention",
    "random_weights": "random_weights",
}


def _session(args: argparse.Namespace, device: str | None = None) -> Session:
    """The Session a command's model and runtime options ask for (``device`` overrides ``args.device``);
    options the command does not have are left to Session's own defaults."""
    from volsam.session import Session

    opts = {kw: getattr(args, dest) for kw, dest in _SESSION_OPTIONS.items() if hasattr(args, dest)}
    if opts.get("clip"):
        opts["clip"] = tuple(opts["clip"])
    return Session(args.model, device if device is not None else args.device, **opts)


def _add_random_weights_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="let a registered architecture name run with random weights (tests and benchmarks only)",
    )


def _add_runtime_args(p: argparse.ArgumentParser) -> None:
    """--precision and --attention (volsam.runtime.choose_runtime; unsupported choices fall back)."""
    from volsam.runtime import ATTENTION, PRECISIONS

    p.add_argument(
        "--precision", default="auto", choices=PRECISIONS, help="auto: bf16 on a CUDA GPU, fp32 on CPU"
    )
    p.add_argument("--attention", default="auto", choices=ATTENTION, help="SDPA kernel (flash: CUDA + bf16/fp16)")
    p.add_argument(
        "--compile", action="store_true", help="torch.compile encoder and decoder (pays off over many volumes)"
    )
    _add_encoder_attention_arg(p)


def _add_encoder_attention_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--encoder-attention",
        default=None,
        choices=("dense", "dilated"),
        help="encoder global attention, same weights (default: the model's own; dilated = FastSAM3D's sparse)",
    )


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"volsam: warning: {' '.join(str(message).split())}", file=sys.stderr)


def _cmd_info(args: argparse.Namespace) -> int:
    from volsam.io import image_info

    info = image_info(args.image)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    for key in ("path", "format", "shape", "spacing", "orientation", "dtype", "min", "max", "mean"):
        val = info[key]
        if key == "spacing":
            val = " x ".join(f"{s:.4g}" for s in val) + " mm"
        elif key == "orientation":
            val = "".join(val)
        print(f"{key:12s} {val}")
    return 0


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


def _cmd_segment(args: argparse.Namespace) -> int:
    import numpy as np

    from volsam.io import check_output_path, default_output_path, read_header

    clicks = getattr(args, "clicks", None) or []
    if args.prompts is not None:
        if args.image is not None or clicks or args.box is not None:
            raise ValueError("--prompts takes the images and prompts from the file; give no image, --point or --box")
        return _segment_batch(args)
    if args.image is None:
        raise ValueError("give an image (or --prompts FILE for a batch)")
    if not clicks and args.box is None:
        raise ValueError("give at least one --point i,j,k (or --box)")
    # Everything that can be checked without the model is checked before it loads (seconds to minutes).
    read_header(args.image)  # a missing, unsupported or corrupt input
    if args.output is not None:
        check_output_path(args.output, args.image)
    t0 = time.perf_counter()
    session = _session(args)
    _err.print(f"model ready in {time.perf_counter() - t0:.2f} s")
    t0 = time.perf_counter()
    session.set_image(args.image)
    vol = session.volume
    out = Path(args.output) if args.output else default_output_path(vol)
    _err.print(
        f"read {args.image}: shape {vol.shape}, spacing {tuple(round(s, 3) for s in vol.spacing)} mm "
        f"({time.perf_counter() - t0:.2f} s)"
    )
    mask = None
    if args.initial:
        from volsam.io import read_image

        initial = read_image(args.initial)
        if initial.shape != vol.shape or not np.allclose(initial.affine, vol.affine, atol=1e-3):
            raise ValueError(f"--initial {args.initial} is not on the image's grid (shape {vol.shape} and affine)")
        mask = session.set_initial_mask(initial.array != 0)
        _report("initial mask", session)
    if args.box is not None:
        mask = session.add_box(args.box[:3], args.box[3:], world=args.world)
        _report("box", session)
    for point, positive in clicks:
        mask = session.add_click(point, positive=positive, world=args.world)
        _report(f"{'+' if positive else '-'} click {point}", session)
    assert mask is not None
    if not mask.any():
        _err.print("[yellow]warning:[/] the mask is empty")
    path = session.save(out)
    spacing = np.prod(vol.spacing)
    _err.print(f"wrote {path}: {int(mask.sum())} voxels, {mask.sum() * spacing / 1000:.1f} mL")
    return 0


def _segment_batch(args: argparse.Namespace) -> int:
    """Exit 0 when every case was written, 1 when any failed (each failure named)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from volsam.batch import read_prompts, run_batch

    cases = read_prompts(args.prompts)  # a bad file fails here, before the model loads
    session = _session(args)
    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=_err, disable=args.no_progress,
    )  # fmt: skip
    with bar:
        task = bar.add_task("segment", total=len(cases))
        results = run_batch(cases, session, output_dir=args.output, on_case=lambda r: bar.advance(task))
    table = Table(title=f"volsam segment --prompts {args.prompts}", title_justify="left")
    for col in ("image", "status", "objects (label: voxels)", "s", "output"):
        table.add_column(col, justify="right" if col == "s" else "left", overflow="fold")
    for r in results:
        objects = ", ".join(f"{k}: {v}" for k, v in r.voxels.items())
        status = "[red]failed[/]" if r.error else "ok"
        table.add_row(r.image.name, status, objects, f"{r.seconds:.1f}", str(r.output or ""))
    _err.print(table)
    for r in results:
        if r.error:
            print(f"volsam: failed {r.image}: {r.error}", file=sys.stderr)
    failed = sum(1 for r in results if r.error)
    print(f"volsam: {len(results) - failed} of {len(results)} image(s) written, {failed} failed", file=sys.stderr)
    return 1 if failed else 0


def _report(what: str, session) -> None:
    t = session.timings
    _err.print(
        f"{what}: encode {t.encode_ms:.0f} ms ({t.windows_encoded} window(s)), decode {t.decode_ms:.0f} ms, "
        f"paste-back {t.paste_ms:.0f} ms"
    )


def _cmd_evaluate(args: argparse.Namespace) -> int:
    """Exit 0 when every case was evaluated, 1 when any was skipped (reasons in summary.json)."""
    from volsam.eval.runner import evaluate

    labels = [s.strip() for s in args.labels.split(",") if s.strip()] if args.labels else None
    protocol = args.protocol
    if protocol is None:  # challenge cases are scored by the challenge's protocol unless told otherwise
        from volsam.challenge import is_challenge_folder

        protocol = "cvpr25" if is_challenge_folder(args.data) else "sam_med3d"
    summary = evaluate(
        args.data,
        args.model,
        protocol,
        args.clicks,
        args.output,
        labels=labels,
        workers=args.workers,
        seed=args.seed,
        window_metrics=args.window_metrics,
        clip=tuple(args.clip) if args.clip else None,
        device=args.device,
        progress=not args.no_progress,
        decoder_checkpoint=args.decoder_checkpoint,
        trust_checkpoint=args.trust_checkpoint,
        memory=args.memory,
        attention_backend=args.encoder_attention,
        random_weights=args.random_weights,
    )
    print(summary.markdown(), end="")
    for case, why in summary.skipped:
        print(f"volsam: skipped {case}: {why}", file=sys.stderr)
    print(f"volsam: wrote {', '.join(summary.files)} to {args.output}", file=sys.stderr)
    return 1 if summary.skipped else 0


def _cmd_challenge_predict(args: argparse.Namespace) -> int:
    """Exit 0 when every case was predicted, 1 when any failed (named on stderr)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from volsam.challenge import challenge_predict

    def factory() -> Session:
        return _session(args, args.device or "cpu")

    files = sorted(Path(args.input).glob("*.npz")) if Path(args.input).is_dir() else []
    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=_err, disable=args.no_progress,
    )  # fmt: skip
    with bar:
        task = bar.add_task("challenge-predict", total=len(files))
        results = challenge_predict(args.input, args.output, factory, on_case=lambda r: bar.advance(task))
    for r in results:
        if r.error:
            print(f"volsam: failed {r.name}: {r.error}", file=sys.stderr)
        else:
            slow = " (over the challenge's 90 s per class)" if r.over_budget else ""
            print(f"{r.name}: {r.classes} class(es), {r.seconds:.1f} s{slow}", file=sys.stderr)
    failed = sum(1 for r in results if r.error)
    print(f"volsam: wrote {len(results) - failed} of {len(results)} case(s) to {args.output}", file=sys.stderr)
    return 1 if failed else 0


def _cmd_train(args: argparse.Namespace) -> int:
    from volsam.train.loop import run_train

    return run_train(args)


def _cmd_distill(args: argparse.Namespace) -> int:
    from volsam.train.distill import run_distill

    return run_distill(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from volsam.demo import run_demo

    r = run_demo(args.output, args.model, args.device)
    print(f"click at voxel {r.click} (left thalamus, Colin27 crop bundled with volsam)")
    print(f"Dice against the AAL label: {r.dice:.3f}")
    print(
        f"timings: model load {r.model_ms:.0f} ms, encode {r.encode_ms:.0f} ms, decode {r.decode_ms:.0f} ms, "
        f"paste-back {r.paste_ms:.0f} ms"
    )
    print(f"wrote {r.mask_path} and {r.png_path}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from volsam.serve.app import create_app
    from volsam.serve.server import server_options
    from volsam.serve.state import token_from
    from volsam.session import resolve_model

    token = token_from(args.token, args.token_file)
    if args.token is not None:
        _err.print(
            "[yellow]warning:[/] a --token on the command line is readable by every local user (ps, "
            "/proc/PID/cmdline); prefer VOLSAM_TOKEN or --token-file"
        )
    _check_port_free(args.host, args.port)
    model = args.model
    if model is None or not (Path(model) / "export.json").is_file():  # an ONNX folder loads per session
        # Loaded now, so a bad --model fails here in one line rather than on the first session's request.
        model = resolve_model(model, args.device, random_weights=args.random_weights)
    app = create_app(
        model,
        data_root=args.data_root,
        token=token,
        max_sessions=args.max_sessions,
        device=args.device,
        max_voxels=args.max_voxels or None,
        idle_timeout_s=args.idle_timeout,
        min_idle_s=args.min_idle,
        max_memory=args.max_memory,
        body_stall_s=args.body_timeout,
    )
    if token is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        _err.print(f"[yellow]warning:[/] serving on {args.host} without a token (set VOLSAM_TOKEN or --token-file)")
    uvicorn.run(app, host=args.host, port=args.port, **server_options(args.header_timeout))
    return 0


def _memory_size(text: str) -> int | str | None:
    """``--max-memory``: bytes (8G, 512M, 1073741824), 0 for no limit, or ``auto``."""
    from volsam.serve.budget import parse_bytes

    if text.strip().lower() == "auto":
        return "auto"
    if text.strip() == "0":
        return None
    try:
        return parse_bytes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _check_port_free(host: str, port: int) -> None:
    """OSError ``port N is in use`` (CLI: one line, rc 2) instead of uvicorn's log line and exit 1."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise OSError(f"cannot serve on {host}: {e.strerror or e}") from e
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise OSError(f"port {port} is in use on {host} (another server?); pick one with --port") from e
            raise OSError(f"cannot serve on {host}:{port}: {e.strerror or e}") from e


def _cmd_memory_build(args: argparse.Namespace) -> int:
    from volsam.memory import build_memory, save_memory
    from volsam.session import resolve_model

    model = resolve_model(
        args.model,
        args.device,
        decoder_checkpoint=args.decoder_checkpoint,
        trust_checkpoint=args.trust_checkpoint,
        random_weights=args.random_weights,
    )
    mem = build_memory(
        model,
        args.data,
        args.block,
        tokens=args.tokens,
        max_tokens=args.max_tokens,
        model_name=str(args.model),
        fp16=args.fp16,
    )
    path = save_memory(mem, args.output)
    heads, m, hd = mem.keys.shape
    print(f"volsam: memorised {m} tokens x {heads} heads x {hd} (block {mem.block}) to {path}", file=sys.stderr)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from volsam.export import export_onnx
    from volsam.session import resolve_model

    model = resolve_model(
        args.model,
        "cpu",
        decoder_checkpoint=args.decoder_checkpoint,
        trust_checkpoint=args.trust_checkpoint,
        random_weights=args.random_weights,
    )
    name = Path(args.model).stem if args.model and Path(args.model).exists() else (args.model or "default")
    paths = export_onnx(model, args.output, opset=args.opset, name=name)
    print(f"volsam: wrote {', '.join(p.name for p in paths.values())} to {args.output}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from volsam.io import DEFAULT_MAX_VOXELS

    parser = argparse.ArgumentParser(prog="volsam", description="Promptable 3D segmentation of medical volumes.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="shape, spacing, orientation and intensity range of an image")
    p.add_argument("image")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("demo", help="segment the bundled real volume from one click with the shipped model")
    p.add_argument("-o", "--output", default="volsam_demo", help="output folder (default: volsam_demo)")
    p.add_argument("--model", default=None, help="registered name or checkpoint (default: shipped model)")
    p.add_argument("--device", default=None)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("memory", help="key/value memories for Memorizing SAM (memory-augmented attention)")
    msub = p.add_subparsers(dest="memory_command", required=True)
    p = msub.add_parser("build", help="memorise one encoder block's keys/values over a labelled dataset")
    p.add_argument("--data", required=True, help="nnU-Net raw folder, images/+labels/ folder, CSV, or colin27-aal")
    _add_model_args(p, required=True, device=False)
    p.add_argument("--device", default=None, help="torch device (default: cpu)")
    p.add_argument("--block", type=int, required=True, help="encoder block (with attention) to memorise")
    p.add_argument("--tokens", choices=("labelled", "all"), default="labelled", help="default: labelled")
    p.add_argument("--max-tokens", type=int, default=None, help="random subset of at most this many tokens")
    p.add_argument("--fp16", action="store_true", help="store keys/values in float16 (half the size)")
    p.add_argument("-o", "--output", required=True, metavar="MEMORY", help="output file (.safetensors)")
    p.set_defaults(func=_cmd_memory_build)

    p = sub.add_parser("serve", help="REST API for interactive segmentation (OpenAPI docs at /docs)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--model", default=None, help="registered name or checkpoint (default: shipped model)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--data-root", default=None, metavar="DIR", help="folder that path-based sessions may read")
    p.add_argument(
        "--token",
        default=None,
        help="bearer token required on every request (default: $VOLSAM_TOKEN; visible to local users in ps: "
        "prefer VOLSAM_TOKEN or --token-file)",
    )
    p.add_argument("--token-file", default=None, metavar="FILE", help="read the bearer token from FILE (one line)")
    p.add_argument("--max-sessions", type=int, default=8, help="live sessions before LRU eviction (default 8)")
    p.add_argument(
        "--idle-timeout", type=float, default=900, metavar="S", help="a session idle this long expires (default 900)"
    )
    p.add_argument(
        "--min-idle",
        type=float,
        default=120,
        metavar="S",
        help="a session may be evicted for a new one only once idle this long, never while in use; otherwise "
        "the new one gets 503 with Retry-After (default 120)",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=10,
        metavar="S",
        help="close a connection whose request headers take longer (default 10)",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=30,
        metavar="S",
        help="answer 408 and close a connection whose request body sends nothing for this long (default 30)",
    )
    p.add_argument(
        "--max-memory",
        type=_memory_size,
        default="auto",
        metavar="BYTES",
        help="memory all sessions together may hold, e.g. 8G or 512M; 0: no limit "
        "(default: half the memory available at start)",
    )
    p.add_argument(
        "--max-voxels",
        type=int,
        default=DEFAULT_MAX_VOXELS,
        help=f"largest image a session may hold, checked from the file's header before reading it "
        f"(default 2^28 = {DEFAULT_MAX_VOXELS}: 1 GiB as float32; 0: no limit)",
    )
    _add_random_weights_arg(p)
    p.set_defaults(func=_cmd_serve)

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

    p = sub.add_parser(
        "segment",
        help="segment an image from clicks",
        description="Clicks are voxel indices i,j,k of the image array (nibabel order for NIfTI, ITK index "
        "order otherwise), or world points in mm RAS+ with --world. They are applied in the order given.",
    )
    p.add_argument("image", nargs="?", help="NIfTI, NRRD, MHA/MHD file or DICOM series folder")
    p.add_argument(
        "--prompts",
        metavar="FILE",
        help="batch: a JSON or CSV file of images with their objects' clicks/boxes (see volsam.batch); "
        "-o is then an output folder. Exit 1 when any image failed",
    )
    p.add_argument("--no-progress", action="store_true", help="batch: no progress bar")
    p.add_argument("--point", type=_point, action=_Click, const=True, metavar="I,J,K", help="positive click")
    p.add_argument("--negative", type=_point, action=_Click, const=False, metavar="I,J,K", help="negative click")
    p.add_argument(
        "--box", type=_box, metavar="I0,J0,K0,I1,J1,K1", help="box: two opposite corners (equal on one axis: a 2D box)"
    )
    p.add_argument("--initial", metavar="MASK", help="existing mask on the image grid to refine (non-zero = object)")
    p.add_argument("--world", action="store_true", help="points are world coordinates in mm (RAS+)")
    p.add_argument("--clip", type=float, nargs=2, metavar=("LO", "HI"), help="intensity clip, e.g. -1000 1000 for CT")
    p.add_argument(
        "-o", "--output", help="output mask (default: beside the input, in its format); with --prompts a folder"
    )
    _add_model_args(p)
    _add_runtime_args(p)
    p.add_argument("--memory", default=None, help="Memorizing-SAM memory file with trained gates")
    p.set_defaults(func=_cmd_segment)

    p = sub.add_parser(
        "evaluate",
        help="simulated-click evaluation of a dataset: Dice/NSD/HD95 per click, reports and plots",
        description="Writes per_click.csv, summary.json, summary.md and figures to -o DIR and prints the Markdown "
        "table. Exit status: 0 when every case was evaluated, 1 when a case was skipped (unreadable, grid "
        "mismatch, no foreground; reasons in summary.json), 2 for usage errors.",
    )
    p.add_argument(
        "--data",
        required=True,
        help="nnU-Net raw folder, images/+labels/ folder, CSV, colin27-aal, or a folder of CVPR 2025 challenge .npz",
    )
    p.add_argument(
        "--protocol",
        choices=("sam_med3d", "cvpr25"),
        default=None,
        help="default: cvpr25 for a folder of CVPR 2025 challenge .npz cases, else sam_med3d",
    )
    p.add_argument("--clicks", type=int, default=5, help="clicks per target (after the box for cvpr25; default 5)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="report folder")
    p.add_argument("--labels", help="comma-separated target names or values (default: all)")
    p.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    p.add_argument("--seed", type=int, default=0, help="base seed of the simulated clicks (default 0)")
    p.add_argument("--window-metrics", action="store_true", help="also Dice inside the 128^3 window (SAM-Med3D)")
    p.add_argument("--clip", type=float, nargs=2, metavar=("LO", "HI"), help="intensity clip, e.g. -1000 1000 for CT")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_model_args(p)
    p.add_argument("--memory", default=None, help="Memorizing-SAM memory file with trained gates")
    _add_encoder_attention_arg(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "challenge-predict",
        help="CVPR 2025 interactive 3D challenge inference: inputs/*.npz -> outputs/*.npz with 'segs'",
        description="Reads each case's imgs, spacing, boxes, clicks, clicks_order and prev_pred and writes "
        "segs (uint8, class i = the i-th prompt entry) under the same file name; see the README's challenge "
        "section. Exit status: 0 all written, 1 a case failed (the others are still written), 2 usage errors.",
    )
    p.add_argument("--input", required=True, metavar="DIR", help="folder of challenge .npz cases")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the predictions")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_model_args(p, device=False)
    p.add_argument("--device", default=None, help="torch device (default: cpu, as the challenge's CPU runs)")
    p.set_defaults(func=_cmd_challenge_predict)

    p = sub.add_parser(
        "export",
        help="export a model as encoder.onnx + decoder.onnx (+ export.json)",
        description="The decoder takes image_embeddings, point_coords [1,N,3] float32, point_labels [1,N] int64, "
        "mask_input [1,1,32,32,32] and has_mask_input [1] (0: no mask prompt); see volsam.export.",
    )
    _add_model_args(p, device=False)
    p.add_argument("--format", choices=("onnx",), default="onnx", help="export format (default: onnx)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder")
    p.set_defaults(func=_cmd_export)

    from volsam.train import add_distill_arguments, add_train_arguments

    p = sub.add_parser("train", help="train or fine-tune a model with simulated clicks (SAM-Med3D recipe)")
    add_train_arguments(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("distill", help="layer-wise progressive distillation of an encoder (FastSAM3D)")
    add_distill_arguments(p)
    p.set_defaults(func=_cmd_distill)
    return parser


_COORD_OPTIONS = ("--point", "--negative", "--box")


def _join_negative_coordinates(argv: Sequence[str]) -> list[str]:
    """``--point -5,100,80`` -> ``--point=-5,100,80``: argparse takes a value that starts with ``-`` and is
    not a plain number for an option, and fails with "expected one argument"."""
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg in _COORD_OPTIONS:
            value = next(it, None)
            if value is not None and value[:1] == "-" and (value[1:2].isdigit() or value[1:2] == "."):
                out.append(f"{arg}={value}")
                continue
            out.append(arg)
            if value is not None:
                out.append(value)
            continue
        out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    parser = build_parser()
    args = parser.parse_args(_join_negative_coordinates(sys.argv[1:] if argv is None else argv))
    shown = warnings.showwarning
    warnings.showwarning = _one_line_warning  # a CLI user gets one line per warning, not a traceback frame
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        _err.print("interrupted")
        return 130
    except (ValueError, OSError) as e:
        if args.debug:
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"volsam: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    sys.exit(main())
