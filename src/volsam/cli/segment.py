"""``volsam segment``: one image from clicks, a box or an initial mask, or a batch from a prompts file."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from volsam.cli.common import Click, add_model_args, add_runtime_args, box, build_session, err, point
from volsam.cli.datastore import add_connection_args, one_line_errors, open_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segment",
        help="segment an image from clicks",
        description="Clicks are voxel indices i,j,k of the image array (nibabel order for NIfTI, ITK index "
        "order otherwise), or world points in mm RAS+ with --world. They are applied in the order given.",
    )
    p.add_argument("image", nargs="?", help="NIfTI, NRRD, MHA/MHD file or DICOM series folder")
    p.add_argument(
        "--dicomweb", metavar="URL",
        help="take the image from a DICOMweb server (e.g. http://pacs:8042/dicom-web) instead: --series UID; "
        "the result is saved as the series' next final label version in the local cache",
    )  # fmt: skip
    p.add_argument("--series", metavar="UID", help="with --dicomweb: the SeriesInstanceUID to segment")
    p.add_argument("--push", action="store_true", help="with --dicomweb: store the result to the server as DICOM-SEG")
    p.add_argument(
        "--prompts",
        metavar="FILE",
        help="batch: a JSON or CSV file of images with their objects' clicks/boxes (see volsam.batch); "
        "-o is then an output folder. Exit 1 when any image failed",
    )
    p.add_argument("--no-progress", action="store_true", help="batch: no progress bar")
    p.add_argument("--point", type=point, action=Click, const=True, metavar="I,J,K", help="positive click")
    p.add_argument("--negative", type=point, action=Click, const=False, metavar="I,J,K", help="negative click")
    p.add_argument(
        "--box", type=box, metavar="I0,J0,K0,I1,J1,K1", help="box: two opposite corners (equal on one axis: a 2D box)"
    )
    p.add_argument("--initial", metavar="MASK", help="existing mask on the image grid to refine (non-zero = object)")
    p.add_argument("--world", action="store_true", help="points are world coordinates in mm (RAS+)")
    p.add_argument("--clip", type=float, nargs=2, metavar=("LO", "HI"), help="intensity clip, e.g. -1000 1000 for CT")
    p.add_argument(
        "-o", "--output", help="output mask (default: beside the input, in its format); with --prompts a folder"
    )
    add_model_args(p)
    add_runtime_args(p)
    p.add_argument("--memory", default=None, help="Memorizing-SAM memory file with trained gates")
    add_connection_args(p)
    p.set_defaults(func=_cmd_segment)


def _cmd_segment(args: argparse.Namespace) -> int:
    import numpy as np

    from volsam.io import check_output_path, default_output_path, read_header

    clicks = getattr(args, "clicks", None) or []
    if args.prompts is not None:
        if args.image is not None or clicks or args.box is not None:
            raise ValueError("--prompts takes the images and prompts from the file; give no image, --point or --box")
        return _segment_batch(args)
    if (args.series is not None or args.push) and args.dicomweb is None:
        raise ValueError("--series and --push go with --dicomweb URL")
    if args.dicomweb is not None and (args.image is not None or args.series is None):
        raise ValueError("--dicomweb URL takes the image from the server: give --series UID and no image path")
    if args.dicomweb is not None and not args.dicomweb.lower().startswith(("http://", "https://")):
        raise ValueError(f"--dicomweb takes an http:// or https:// URL, got {args.dicomweb!r}")
    if args.image is None and args.dicomweb is None:
        raise ValueError("give an image (or --dicomweb URL --series UID, or --prompts FILE for a batch)")
    if not clicks and args.box is None:
        raise ValueError("give at least one --point i,j,k (or --box)")
    # Everything that can be checked without the model is checked before it loads (seconds to minutes).
    store = None
    t0 = time.perf_counter()
    if args.dicomweb is not None:
        with one_line_errors():  # a PACS that is down fails here, before the model loads
            store = open_from_args(args.dicomweb, args)
            source = store.get_image(args.series)
        shown = f"series {args.series} from {store.location}"
    else:
        read_header(args.image)  # a missing, unsupported or corrupt input
        source, shown = args.image, args.image
    if args.output is not None:
        check_output_path(args.output, source)
    read_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    session = build_session(args)
    err.print(f"model ready in {time.perf_counter() - t0:.2f} s")
    t0 = time.perf_counter()
    session.set_image(source)
    vol = session.volume
    # From a DICOMweb server the result goes to the datastore (and -o, when given).
    out = Path(args.output) if args.output else None if store is not None else default_output_path(vol)
    err.print(
        f"read {shown}: shape {vol.shape}, spacing {tuple(round(s, 3) for s in vol.spacing)} mm "
        f"({read_s + time.perf_counter() - t0:.2f} s)"
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
    for pt, positive in clicks:
        mask = session.add_click(pt, positive=positive, world=args.world)
        _report(f"{'+' if positive else '-'} click {pt}", session)
    assert mask is not None
    if not mask.any():
        err.print("[yellow]warning:[/] the mask is empty")
    spacing = np.prod(vol.spacing)
    if store is not None:
        _save_to_datastore(store, args, session)
    if out is None:
        return 0
    path = session.save(out)
    err.print(f"wrote {path}: {int(mask.sum())} voxels, {mask.sum() * spacing / 1000:.1f} mL")
    return 0


def _save_to_datastore(store, args: argparse.Namespace, session) -> None:
    """The result as the series' next final label version (earlier versions are kept), then, with
    --push, its DICOM-SEG stored to the server; a failed push keeps the local version (one-line error)."""
    with one_line_errors():
        saved = store.save_label(
            args.series, session.label_map, "final", force=True, reference=session.volume, push=args.push
        )
    err.print(f"saved final label v{saved.version} of series {args.series} to {saved.path}")
    if saved.remote:
        err.print(f"stored DICOM-SEG {saved.remote['seg_sop_instance_uid']} to {saved.remote['url']}")


def _segment_batch(args: argparse.Namespace) -> int:
    """Exit 0 when every case was written, 1 when any failed (each failure named)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from volsam.batch import read_prompts, run_batch

    cases = read_prompts(args.prompts)  # a bad file fails here, before the model loads
    session = build_session(args)
    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err, disable=args.no_progress,
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
    err.print(table)
    for r in results:
        if r.error:
            print(f"volsam: failed {r.image}: {r.error}", file=sys.stderr)
    failed = sum(1 for r in results if r.error)
    print(f"volsam: {len(results) - failed} of {len(results)} image(s) written, {failed} failed", file=sys.stderr)
    return 1 if failed else 0


def _report(what: str, session) -> None:
    t = session.timings
    err.print(
        f"{what}: encode {t.encode_ms:.0f} ms ({t.windows_encoded} window(s)), decode {t.decode_ms:.0f} ms, "
        f"paste-back {t.paste_ms:.0f} ms"
    )
