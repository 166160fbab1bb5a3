"""``volsam datastore list|pull|push URL_OR_DIR ...``: images and labels in a folder or on a DICOMweb server
(:mod:`volsam.datastore`); also the connection options ``volsam segment --dicomweb`` and ``volsam serve
--datastore`` share.

Credentials: ``--dicomweb-user`` (password from ``$VOLSAM_DICOMWEB_PASSWORD``, or ``--dicomweb-password``,
which other users of the machine can see in the process list) or ``--dicomweb-token`` /
``$VOLSAM_DICOMWEB_TOKEN``; never printed.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from volsam.cli.common import err


def add_connection_args(p: argparse.ArgumentParser) -> None:
    """DICOMweb credentials, timeout and cache options (ignored for a folder)."""
    g = p.add_argument_group("DICOMweb server")
    g.add_argument(
        "--dicomweb-user", default=None, metavar="USER", help="HTTP basic user (default: $VOLSAM_DICOMWEB_USER)"
    )
    g.add_argument(
        "--dicomweb-password", default=None, metavar="PASSWORD",
        help="HTTP basic password (default: $VOLSAM_DICOMWEB_PASSWORD, preferred: options show in `ps`)",
    )  # fmt: skip
    g.add_argument(
        "--dicomweb-token", default=None, metavar="TOKEN", help="bearer token (default: $VOLSAM_DICOMWEB_TOKEN)"
    )
    g.add_argument(
        "--dicomweb-timeout", type=float, default=30.0, metavar="S", help="seconds to wait for the server (default 30)"
    )
    g.add_argument(
        "--cache-dir", default=None, metavar="DIR",
        help="where series are retrieved and labels saved (default: ~/.cache/volsam/dicomweb/HOST_PORT)",
    )  # fmt: skip


def open_from_args(target: str, args: argparse.Namespace, *, create: bool = False) -> Any:
    """The datastore ``target`` names (a folder or an http(s) URL) with the connection options of ``args``."""
    from volsam.datastore import is_url, open_datastore

    if is_url(target):
        opts = {"user": args.dicomweb_user, "password": args.dicomweb_password, "token": args.dicomweb_token,
                "timeout": args.dicomweb_timeout, "cache_dir": args.cache_dir}
        return open_datastore(target, **opts)
    return open_datastore(target, create=create)


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Datastore failures (PACS down, conflict, unknown image) as the CLI's one-line errors (OSError/ValueError)."""
    from volsam.datastore import DatastoreError

    try:
        yield
    except KeyError as e:
        raise ValueError(str(e.args[0]) if e.args else "not found") from e
    except (DatastoreError, ImportError) as e:  # ImportError: a URL without the `datastore` extra
        raise OSError(" ".join(str(e).split())) from e


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "datastore",
        help="images and labels in a folder or on a DICOMweb server (PACS)",
        description="A datastore is a folder (images, labels/original, labels/final) or a DICOMweb URL such "
        "as http://host:8042/dicom-web (series retrieved into a local cache; final labels stored as DICOM-SEG).",
    )
    cmds = p.add_subparsers(dest="datastore_command", required=True)

    ls = cmds.add_parser("list", help="images with their label status")
    ls.add_argument("target", metavar="URL_OR_DIR")
    ls.add_argument("--json", action="store_true", help="print JSON")
    add_connection_args(ls)
    ls.set_defaults(func=_cmd_list)

    pull = cmds.add_parser("pull", help="retrieve an image into the cache (DICOMweb) and print where it is")
    pull.add_argument("target", metavar="URL_OR_DIR")
    pull.add_argument("image", metavar="IMAGE_ID", help="id from `volsam datastore list` (DICOMweb: SeriesInstanceUID)")
    pull.add_argument("--label", metavar="FILE", help="also write its latest final label map to FILE (.nii.gz, ...)")
    add_connection_args(pull)
    pull.set_defaults(func=_cmd_pull)

    push = cmds.add_parser(
        "push",
        help="add images, save a label, or send pending labels to the PACS",
        description="With IMAGE paths: add each (a file, or a DICOM series folder; to a DICOMweb server an "
        "image file is sent as a DICOM series). With --label MASK --image ID: save MASK as the image's next "
        "final label version (DICOMweb: and store it as DICOM-SEG). With neither: send the final labels "
        "saved while the DICOMweb server could not be reached.",
    )
    push.add_argument("target", metavar="URL_OR_DIR")
    push.add_argument("paths", nargs="*", metavar="IMAGE", help="image files or DICOM series folders to add")
    push.add_argument("--label", metavar="MASK", help="a label map on the image's grid to save")
    push.add_argument("--image", metavar="IMAGE_ID", help="the image --label belongs to")
    push.add_argument("--force", action="store_true", help="save --label even if a newer label version exists")
    add_connection_args(push)
    push.set_defaults(func=_cmd_push)


def _cmd_list(args: argparse.Namespace) -> int:
    with one_line_errors():
        ds = open_from_args(args.target, args)
        images = ds.list_images()
    if args.json:
        print(json.dumps({"location": ds.location, "images": [e.as_dict() for e in images]}, indent=1))
        return 0
    err.print(f"{len(images)} image(s) in {ds.location}")
    for e in images:
        versions = ", ".join(f"{k} v{v}" for k, v in e.labels.items()) or "-"
        print(f"{e.id}\t{e.status}\t{versions}\t{e.name}")
    return 0


def _cmd_pull(args: argparse.Namespace) -> int:
    import numpy as np

    from volsam.io import check_output_path, write_mask

    with one_line_errors():
        ds = open_from_args(args.target, args)
        vol = ds.get_image(args.image)
        if args.label:
            check_output_path(args.label, vol)
        label = ds.get_label(args.image, "final") if args.label else None
    where = vol.meta.get("directory", vol.path)
    print(where)
    if args.label:
        if label is None:
            raise ValueError(f"image {args.image} has no saved final label")
        write_mask(np.asarray(label[0]), vol, args.label)
        err.print(f"wrote final label v{label[1]} to {args.label}")
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from volsam.io import read_image

    if args.label is not None and (args.image is None or args.paths):
        raise ValueError("--label MASK needs --image IMAGE_ID and no image paths")
    if args.label is None and args.image is not None:
        raise ValueError("--image names the image of a --label MASK; give --label too")
    with one_line_errors():
        ds = open_from_args(args.target, args, create=bool(args.paths))
        if args.paths:
            for path in args.paths:
                entry = ds.add_image(Path(path))
                print(f"{entry.id}\t{path}")
            return 0
        if args.label is not None:
            vol = ds.get_image(args.image)
            mask = read_image(args.label, dtype=None)
            if mask.shape != vol.shape:
                raise ValueError(f"--label {args.label} has shape {mask.shape}; image {args.image} has {vol.shape}")
            ds.get_label(args.image, "final")  # DICOMweb: learn of SEGs saved elsewhere, for the conflict check
            # A file from outside started from no saved version: refused when one exists, unless --force.
            saved = ds.save_label(args.image, mask.array, "final", base_version=None, force=args.force, reference=vol)
            print(f"{saved.image_id}\tfinal v{saved.version}\t{saved.remote.get('seg_sop_instance_uid', saved.path)}")
            return 0
        pending = getattr(ds, "push_pending", None)
        if pending is None:
            raise ValueError("a folder datastore has nothing to send; give image paths or --label MASK --image ID")
        sent = pending()
    for s in sent:
        print(f"{s.image_id}\tfinal v{s.version}\t{s.remote.get('seg_sop_instance_uid', '')}")
    err.print(f"sent {len(sent)} pending label(s) to {ds.location}")
    return 0
