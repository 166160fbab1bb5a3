"""Official checkpoints by name: where each one is published, fetching it into the cache, finding it offline.

:data:`OFFICIAL_WEIGHTS` lists the released checkpoints volsam loads, each with the registered architecture
it fits (:mod:`volsam.registry`), where it is published, its size as published and its licence. Only facts
found in the publishers' own pages are recorded; a sha256 is None where no publisher states one (for files
on the Hugging Face hub the file's LFS ETag *is* its sha256, and :func:`fetch` checks the download against
it).

Where files go:

- Hugging Face files (``repo_id`` + ``filename``) are fetched with ``huggingface_hub`` into its standard
  cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``, else
  ``~/.cache/huggingface/hub``), so a file that another tool fetched is found and not fetched again.
  With ``$VOLSAM_CACHE`` set they go to ``$VOLSAM_CACHE/hf`` instead.
- Other files (``url``) are fetched over plain HTTPS into :func:`cache_dir` ``/weights/NAME/``
  (``$VOLSAM_CACHE``, else ``$XDG_CACHE_HOME/volsam``, else ``~/.cache/volsam``).

Both downloads resume an interrupted transfer (HTTP ``Range``) and show a progress bar; the finished file is
then loaded strictly into its architecture (:func:`volsam.checkpoint.load_weights`), so a file that does not
fit fails at ``fetch`` time and not in the middle of a session.

``$VOLSAM_HUB_ENDPOINT`` (else ``$HF_ENDPOINT``) replaces ``https://huggingface.co``: a mirror, or in tests a
loopback server. :func:`register_weights` adds or overrides an entry (tests register a small architecture).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "OFFICIAL_WEIGHTS",
    "DigestMismatchError",
    "FetchResult",
    "OfficialWeights",
    "WeightsNotFetchedError",
    "cache_dir",
    "cached_path",
    "fetch",
    "hub_endpoint",
    "is_official",
    "list_weights",
    "register_weights",
    "verify_weights",
    "weights_info",
    "weights_path",
]

HF_ENDPOINT = "https://huggingface.co"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20  # bytes per read of a plain HTTPS download


class WeightsNotFetchedError(ValueError):
    """Official weights asked for by name that are not in the cache; the message is one line."""


class DigestMismatchError(ValueError):
    """A fetched file whose sha256 differs from the recorded one."""


@dataclass(frozen=True)
class OfficialWeights:
    """One published checkpoint.

    Attributes:
        name: the name volsam knows it by (``--model NAME``, ``Session(NAME)``); distinct from architecture names.
        architecture: registered variant the file fits (:func:`volsam.registry.list_models`).
        description: one line.
        source: the publisher's page that links the file.
        licence: as the publisher states it.
        repo_id, filename, revision: where it lives on the Hugging Face hub (None when it does not).
        url: plain HTTPS download for files not on the hub.
        size: size as published (e.g. ``"402 MB"``), None when unknown.
        sha256: recorded digest, None when no publisher states one.
        note: what a user should know before fetching (e.g. an architecture not yet confirmed).
        manual: True when the only copy sits behind a page a program cannot download from (Google Drive's
            confirmation page): ``fetch`` then names the page instead of downloading.
    """

    name: str
    architecture: str
    description: str
    source: str
    licence: str
    repo_id: str | None = None
    filename: str | None = None
    revision: str = "main"
    url: str | None = None
    size: str | None = None
    sha256: str | None = None
    note: str = ""
    manual: bool = False

    def __post_init__(self) -> None:
        if not self.manual and (self.repo_id is None) == (self.url is None):
            raise ValueError(f"weights {self.name!r}: give either repo_id + filename (Hugging Face) or url")
        if self.repo_id is not None and not self.filename:
            raise ValueError(f"weights {self.name!r}: a Hugging Face entry needs a filename")
        if self.sha256 is not None and not _SHA256.match(self.sha256):
            raise ValueError(f"weights {self.name!r}: sha256 must be 64 lowercase hex digits, got {self.sha256!r}")

    @property
    def file_name(self) -> str:
        """Name of the file on disk."""
        if self.filename:
            return Path(self.filename).name
        if self.url:
            return Path(urllib.request.urlparse(self.url).path).name or f"{self.name}.pth"
        return f"{self.name}.pth"

    def download_url(self, endpoint: str | None = None) -> str:
        """Where the file is downloaded from (the publisher's page for a manual entry)."""
        if self.repo_id is not None:
            base = (endpoint or hub_endpoint()).rstrip("/")
            return f"{base}/{self.repo_id}/resolve/{self.revision}/{self.filename}"
        return self.url or self.source


_SAM_MED3D_PAGE = "https://github.com/uni-medical/SAM-Med3D#-checkpoint"
_SAM_MED3D_LICENCE = "Apache-2.0 (SAM-Med3D repository)"
_CVPR25_NOTE = (
    "fine-tune for the CVPR 2025 challenge (SAM-Med3D branch CVPR25_3DFM); that branch's prompt encoder is "
    "not confirmed to match volsam's sam_med3d: fetch loads it strictly and says so if it does not fit"
)

OFFICIAL_WEIGHTS: dict[str, OfficialWeights] = {
    w.name: w
    for w in (
        OfficialWeights(
            name="sam_med3d_turbo",
            architecture="sam_med3d",
            description="SAM-Med3D-turbo: SAM-Med3D fine-tuned on 44 datasets (the authors' recommended weights)",
            source=_SAM_MED3D_PAGE,
            licence=_SAM_MED3D_LICENCE,
            repo_id="blueyo0/SAM-Med3D",
            filename="sam_med3d_turbo.pth",
            size="402 MB",
        ),
        OfficialWeights(
            name="sam_med3d_turbo_bbox_cvpr",
            architecture="sam_med3d",
            description="SAM-Med3D-turbo fine-tuned with boxes: the CVPR 2025 challenge baseline",
            source="https://github.com/uni-medical/SAM-Med3D/tree/CVPR25_3DFM",
            licence=_SAM_MED3D_LICENCE,
            repo_id="blueyo0/SAM-Med3D",
            filename="sam_med3d_turbo_bbox_cvpr.pth",
            note=_CVPR25_NOTE,
        ),
        OfficialWeights(
            name="sam_med3d_turbo_cvpr_coreset",
            architecture="sam_med3d",
            description="SAM-Med3D-turbo fine-tuned on the CVPR 2025 challenge coreset",
            source="https://huggingface.co/blueyo0/SAM-Med3D",
            licence=_SAM_MED3D_LICENCE,
            repo_id="blueyo0/SAM-Med3D",
            filename="sam_med3d_turbo_cvpr_coreset.pth",
            size="402 MB",
            note=_CVPR25_NOTE,
        ),
        OfficialWeights(
            name="fastsam3d_official",
            architecture="fastsam3d",
            description="FastSAM3D: 6-layer distilled encoder with SAM-Med3D-turbo's prompt encoder and decoder",
            source="https://github.com/arcadelab/FastSAM3D#checkpoint",
            licence="Apache-2.0 (FastSAM3D repository)",
            repo_id="techlove/FastSAM3D",
            filename="FastSAM3D.pth",
            size="638 MB",
            note="also on Google Drive (https://drive.google.com/uc?export=download&id=1vmtqWzERvnGVwZVSSMpw_fE0zGHL_4QP)",
        ),
        OfficialWeights(
            name="sam_med3d_v1",
            architecture="sam_med3d",
            description="the first SAM-Med3D release (sam_med3d.pth), superseded by sam_med3d_turbo",
            source="https://drive.google.com/file/d/1PFeUjlFMAppllS9x1kAWyCYUJM9re2Ub/view?usp=sharing",
            licence=_SAM_MED3D_LICENCE,
            filename="sam_med3d.pth",
            manual=True,
            note="only on Google Drive / Baidu: download sam_med3d.pth by hand and give its path to --model",
        ),
    )
}
"""The official checkpoints, by volsam name."""


# --------------------------------------------------------------------------------------------------
# catalogue


def list_weights() -> list[OfficialWeights]:
    """The catalogue, in the order it was registered."""
    return list(OFFICIAL_WEIGHTS.values())


def is_official(name: object) -> bool:
    """Whether ``name`` names official weights."""
    return isinstance(name, str) and name in OFFICIAL_WEIGHTS


def weights_info(name: str) -> OfficialWeights:
    if name not in OFFICIAL_WEIGHTS:
        raise ValueError(f"unknown official weights {name!r}; expected one of {', '.join(OFFICIAL_WEIGHTS)}")
    return OFFICIAL_WEIGHTS[name]


def register_weights(entry: OfficialWeights, *, overwrite: bool = False) -> OfficialWeights:
    """Add ``entry`` to the catalogue (``overwrite=True`` replaces an entry of the same name)."""
    from volsam.registry import list_models

    if entry.architecture not in list_models():
        raise ValueError(
            f"weights {entry.name!r}: unknown architecture {entry.architecture!r}; expected one of "
            f"{', '.join(list_models())}"
        )
    if entry.name in list_models():
        raise ValueError(f"weights name {entry.name!r} is an architecture name; weights need a name of their own")
    if entry.name in OFFICIAL_WEIGHTS and not overwrite:
        raise ValueError(f"weights {entry.name!r} are already registered (pass overwrite=True to replace them)")
    OFFICIAL_WEIGHTS[entry.name] = entry
    return entry


# --------------------------------------------------------------------------------------------------
# locations


def cache_dir() -> Path:
    """volsam's cache root: ``$VOLSAM_CACHE``, else ``$XDG_CACHE_HOME/volsam``, else ``~/.cache/volsam``."""
    env = os.environ.get("VOLSAM_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "volsam"


def hub_endpoint() -> str:
    """Hugging Face endpoint: ``$VOLSAM_HUB_ENDPOINT``, else ``$HF_ENDPOINT``, else https://huggingface.co."""
    return os.environ.get("VOLSAM_HUB_ENDPOINT") or os.environ.get("HF_ENDPOINT") or HF_ENDPOINT


def _hf_cache() -> str | None:
    """huggingface_hub's cache_dir argument: None (its own standard cache) unless $VOLSAM_CACHE is set."""
    return str(cache_dir() / "hf") if os.environ.get("VOLSAM_CACHE") else None


def _plain_path(entry: OfficialWeights) -> Path:
    return cache_dir() / "weights" / entry.name / entry.file_name


def cached_path(name: str) -> Path | None:
    """The fetched file of official weights ``name``, or None; never touches the network."""
    entry = weights_info(name)
    if entry.manual:
        return None
    if entry.repo_id is not None:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(entry.repo_id, entry.filename, cache_dir=_hf_cache(), revision=entry.revision)
        return Path(found) if isinstance(found, str) and Path(found).is_file() else None
    path = _plain_path(entry)
    return path if path.is_file() else None


def weights_path(name: str) -> Path:
    """The fetched file of official weights ``name``; :class:`WeightsNotFetchedError` (one line naming the URL
    and the command) when it is not in the cache."""
    entry = weights_info(name)
    if entry.manual:
        raise WeightsNotFetchedError(
            f"official weights {name!r} cannot be fetched by volsam: download {entry.file_name} from "
            f"{entry.source} and give its path to --model (architecture {entry.architecture})"
        )
    path = cached_path(name)
    if path is None:
        raise WeightsNotFetchedError(
            f"official weights {name!r} are not fetched yet: run `volsam weights fetch {name}` "
            f"(downloads {entry.download_url()}{f', {entry.size}' if entry.size else ''})"
        )
    return path


# --------------------------------------------------------------------------------------------------
# fetching and verifying


@dataclass(frozen=True)
class FetchResult:
    """What :func:`fetch` did.

    Attributes:
        name, path: the weights and the cached file.
        sha256: digest of the file.
        sha256_checked_against: ``"volsam"`` (the catalogue's digest), ``"hub"`` (the hub's LFS ETag) or
            None (nothing to compare with).
        architecture: the variant the file was strictly loaded into, None when not verified.
    """

    name: str
    path: Path
    sha256: str
    sha256_checked_against: str | None
    architecture: str | None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _hub_digest(path: Path) -> str | None:
    """The LFS sha256 the hub cache names the file's blob by (``blobs/<etag>``), when it is one."""
    blob = Path(os.path.realpath(path)).name
    return blob if _SHA256.match(blob) else None


def verify_weights(name: str, path: str | Path, *, trust_checkpoint: bool = False) -> tuple[str, str | None]:
    """Check a file against official weights ``name``: its sha256 (when one is known) and a strict load
    into the entry's architecture. Returns ``(sha256, what it was checked against or None)``.

    Raises:
        ValueError: the digest differs; :class:`~volsam.checkpoint.CheckpointError` (a ValueError): the
            file does not load strictly into the architecture (the message says which variant it fits).
    """
    from volsam.registry import build_model

    entry = weights_info(name)
    path = Path(path)
    digest = _sha256(path)
    want, against = (entry.sha256, "volsam") if entry.sha256 else (_hub_digest(path), "hub")
    if want is not None and digest != want:
        raise DigestMismatchError(
            f"{path} has sha256 {digest}, but {name!r} should have {want} "
            f"({'recorded by volsam' if against == 'volsam' else 'the hub ETag'})"
        )
    build_model(entry.architecture, path, trust_checkpoint=trust_checkpoint)
    return digest, against if want is not None else None


def _download_plain(url: str, dest: Path, *, progress: bool, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming a partial file with an HTTP Range request;
    the finished file is renamed into place (never a half-written ``dest``)."""
    from tqdm.auto import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the part file is already whole
            os.replace(part, dest)
            return dest
        raise OSError(f"download of {url} failed: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise OSError(f"cannot reach {url} ({reason}); check the network, or fetch on another machine") from None
    with resp:
        if have and resp.status != 206:  # the server ignored Range: start again
            have = 0
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with (
            open(part, "ab" if have else "wb") as f,
            tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar,
        ):
            try:
                for block in iter(lambda: resp.read(_CHUNK), b""):
                    f.write(block)
                    bar.update(len(block))
            except (http.client.IncompleteRead, ConnectionError, TimeoutError) as e:
                # What arrived stays in the part file; the next fetch asks for the rest.
                f.write(getattr(e, "partial", b""))
                f.flush()
                raise OSError(
                    f"download of {url} stopped at {part.stat().st_size} bytes ({type(e).__name__}); "
                    "run fetch again to resume"
                ) from None
    if total is not None and part.stat().st_size != total:
        raise OSError(f"download of {url} stopped at {part.stat().st_size} of {total} bytes; run fetch again to resume")
    os.replace(part, dest)
    return dest


def _download_hf(entry: OfficialWeights, *, progress: bool, endpoint: str | None) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    if not progress:
        disable_progress_bars()
    try:
        return Path(
            hf_hub_download(
                entry.repo_id,  # type: ignore[arg-type]  # checked by __post_init__
                entry.filename,  # type: ignore[arg-type]
                revision=entry.revision,
                cache_dir=_hf_cache(),
                endpoint=endpoint or hub_endpoint(),
            )
        )
    except OSError:
        raise
    except Exception as e:  # huggingface_hub's HTTP and offline errors
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise OSError(f"cannot fetch {entry.download_url(endpoint)}: {msg}") from None
    finally:
        if not progress:
            enable_progress_bars()


def fetch(
    name: str,
    *,
    progress: bool = True,
    verify: bool = True,
    trust_checkpoint: bool = False,
    endpoint: str | None = None,
) -> FetchResult:
    """Download official weights ``name`` into the cache (a cached file is not downloaded again), then
    verify them (:func:`verify_weights`) unless ``verify=False``.

    Args:
        name: a name from :func:`list_weights`.
        progress: show a progress bar on stderr.
        verify: check the sha256 (when known) and load the file strictly into its architecture.
        trust_checkpoint: allow full unpickling in the strict load (only for files you trust).
        endpoint: Hugging Face endpoint; None = :func:`hub_endpoint`.

    Raises:
        ValueError: unknown or manual-only name, digest mismatch, file that does not fit its architecture;
        OSError: network failure (rerun to resume).
    """
    entry = weights_info(name)
    if entry.manual:
        weights_path(name)  # raises the one-line "download it by hand" message
    if entry.repo_id is not None:
        path = _download_hf(entry, progress=progress, endpoint=endpoint)
    else:
        path = cached_path(name) or _download_plain(entry.url, _plain_path(entry), progress=progress)  # type: ignore[arg-type]
    if not verify:
        return FetchResult(name, path, _sha256(path), None, None)
    try:
        digest, against = verify_weights(name, path, trust_checkpoint=trust_checkpoint)
    except DigestMismatchError as e:
        # A corrupt or substituted file must not be found by name later: remove it (and the hub blob behind it).
        real = Path(os.path.realpath(path))
        path.unlink(missing_ok=True)
        real.unlink(missing_ok=True)
        raise DigestMismatchError(f"{e}; the file was removed, fetch again") from None
    return FetchResult(name, path, digest, against, entry.architecture)
