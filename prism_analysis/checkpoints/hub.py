"""Checkpoint references: a local path, or a Hugging Face Hub repository at a revision and subfolder.

Grammar (every command and the Python API)::

    path/on/disk                      a local path wins whenever it exists
    org/name                          the repository's default branch (main)
    org/name@revision                 a branch, tag or commit (mergekit's convention):
                                      EleutherAI/pythia-160m@step1000
    org/name@revision:subfolder       a checkpoint in a folder of the repository: org/run@main:step-0200
    org/name:subfolder                the same on the default branch

``:`` cannot occur in repository ids or git refs, so the forms never collide. References resolve
through ``huggingface_hub``: files land in its standard cache (``HF_HOME`` / ``HF_HUB_CACHE``),
``HF_HUB_OFFLINE=1`` reads the cache only, ``HF_TOKEN`` reaches private and gated repositories.
Only what a command needs is downloaded: the safetensors weights, their index and ``config.json``
(plus the tokenizer files for commands that run the model). A repository with pickle weights only
is refused unless ``allow_pickle``.

:func:`remote_header` reads the tensors' names, shapes and dtypes from the safetensors headers on the
Hub (a few kilobytes each), so a mismatched pair fails before gigabytes are downloaded.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import PARAM, PrismError

REFERENCE = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[^:@]+))?(?::(?P<subfolder>[^:]+))?$")
WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json", "config.json")
PICKLE_FILES = ("*.bin", "*.bin.index.json", "*.pt", "*.pth")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "generation_config.json",
)
GRAMMAR = "a local path, or org/name[@revision][:subfolder] on the Hugging Face Hub"


@dataclass(frozen=True)
class HubReference:
    """A checkpoint on the Hub: ``repo_id``, ``revision`` (None: the default branch), ``subfolder``."""

    repo_id: str
    revision: str | None = None
    subfolder: str | None = None

    def __str__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        sub = f":{self.subfolder}" if self.subfolder else ""
        return f"{self.repo_id}{rev}{sub}"

    def at(self, revision: str | None = None, subfolder: str | None = None) -> HubReference:
        """The same repository at another revision or subfolder."""
        return HubReference(self.repo_id, revision or self.revision, subfolder or self.subfolder)


def parse_reference(source) -> Path | HubReference:
    """A local path (when it exists) or a :class:`HubReference`; raises for neither."""
    if isinstance(source, HubReference):
        return source
    text = os.fspath(source)
    if Path(text).exists() or Path(text).is_symlink():
        return Path(text)
    m = REFERENCE.match(text)
    if m is None or text.startswith(("/", "./", "../", "~")):
        raise PrismError("no such file or directory", text)
    sub = m.group("subfolder")
    return HubReference(m.group("repo"), m.group("revision"), sub.strip("/") if sub else None)


def is_hub_reference(source) -> bool:
    """Whether ``source`` names a checkpoint on the Hub (a local path that exists never does)."""
    try:
        return isinstance(parse_reference(source), HubReference)
    except PrismError:
        return False


def _api():
    from huggingface_hub import HfApi

    return HfApi()


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]


def hub_error(e: BaseException, ref: HubReference) -> PrismError:
    """A one-line :class:`PrismError` for what ``huggingface_hub`` raised while resolving ``ref``."""
    from huggingface_hub import errors

    rev = ref.revision or "main"
    if isinstance(e, errors.GatedRepoError):
        return PrismError("the repository is gated: accept its terms on the Hub and set HF_TOKEN", ref.repo_id)
    if isinstance(e, errors.RepositoryNotFoundError):
        return PrismError("no such model repository on the Hub (or it is private: set HF_TOKEN)", ref.repo_id)
    if isinstance(e, errors.RevisionNotFoundError):
        return PrismError(f"the repository has no revision {rev!r}", ref.repo_id)
    if isinstance(e, (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled)):
        return PrismError(f"revision {rev!r} is not in the local Hub cache, and HF_HUB_OFFLINE is set", ref.repo_id)
    if isinstance(e, errors.EntryNotFoundError):
        return PrismError(f"a file is missing at revision {rev!r} ({_one_line(e)})", ref.repo_id)
    return PrismError(f"cannot reach the Hub ({type(e).__name__}: {_one_line(e)})", str(ref))


def _patterns(ref: HubReference, names) -> list[str]:
    prefix = f"{ref.subfolder}/" if ref.subfolder else ""
    return [prefix + n for n in names]


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def split_adapter_reference(source) -> tuple[str, str] | None:
    """``(BASE, ADAPTER)`` when ``source`` reads ``BASE+ADAPTER`` with either side on the Hub (each
    side a local path that exists or a Hub reference); None otherwise. Local-only pairs are split by
    :func:`prism_analysis.checkpoints.lora.split_reference`."""
    text = os.fspath(source) if not isinstance(source, HubReference) else str(source)
    if "+" not in text or Path(text).exists():
        return None
    for i, c in enumerate(text):
        if c != "+":
            continue
        base, adapter = text[:i], text[i + 1 :]
        sides = [Path(x).exists() or REFERENCE.match(x) is not None for x in (base, adapter)]
        if all(sides) and (is_hub_reference(base) or is_hub_reference(adapter)):
            return base, adapter
    return None


def fetch_adapter(ref: HubReference, allow_pickle: bool = False, progress: bool = True) -> Path:
    """Download (or find in the cache) a PEFT adapter on the Hub; its local folder."""
    from huggingface_hub import snapshot_download

    names = list(ADAPTER_FILES) + (["adapter_model.bin"] if allow_pickle else [])
    try:
        folder = snapshot_download(ref.repo_id, revision=ref.revision, allow_patterns=_patterns(ref, names))
    except Exception as e:
        raise hub_error(e, ref) from None
    return Path(folder) / ref.subfolder if ref.subfolder else Path(folder)


def repo_files(ref: HubReference) -> list[str] | None:
    """The repository's files at the revision (paths inside the repo), or None offline."""
    if _offline():
        return None
    try:
        return _api().list_repo_files(ref.repo_id, revision=ref.revision)
    except Exception as e:
        raise hub_error(e, ref) from None


def fetch(
    ref: HubReference,
    tokenizer: bool = False,
    allow_pickle: bool = False,
    progress: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Download (or find in the cache) what a command needs of ``ref``; the local checkpoint folder."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    files = repo_files(ref)
    names = list(WEIGHT_FILES) + (list(TOKENIZER_FILES) if tokenizer else [])
    if files is not None:
        inside = [f for f in files if not ref.subfolder or f.startswith(ref.subfolder + "/")]
        if not inside:
            raise PrismError(f"the repository has no folder {ref.subfolder!r} at {ref.revision or 'main'}", ref.repo_id)
        if not any(fnmatch.fnmatch(f, p) for f in inside for p in _patterns(ref, ["*.safetensors"])):
            if not any(fnmatch.fnmatch(f, p) for f in inside for p in _patterns(ref, PICKLE_FILES)):
                raise PrismError("no safetensors or pytorch weights in this checkpoint", str(ref))
            if not allow_pickle:
                raise PrismError(
                    "the repository has pickle weights only (they can run code); pass " + PARAM + " to load "
                    "them with torch.load(weights_only=True)",
                    str(ref),
                    param="allow_pickle",
                )
            names += list(PICKLE_FILES)
    elif allow_pickle:
        names += list(PICKLE_FILES)
    if not progress:
        disable_progress_bars()
    try:
        folder = snapshot_download(
            ref.repo_id, revision=ref.revision, allow_patterns=_patterns(ref, names), cache_dir=cache_dir
        )
    except Exception as e:
        raise hub_error(e, ref) from None
    finally:
        if not progress:
            enable_progress_bars()
    local = Path(folder) / ref.subfolder if ref.subfolder else Path(folder)
    if not local.is_dir():
        raise PrismError(f"the repository has no folder {ref.subfolder!r} at {ref.revision or 'main'}", ref.repo_id)
    return local


def resolve(
    source,
    tokenizer: bool = False,
    allow_pickle: bool = False,
    progress: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """The local path of a checkpoint reference: itself when local, else :func:`fetch`."""
    ref = parse_reference(source)
    if isinstance(ref, Path):
        return ref
    return fetch(ref, tokenizer=tokenizer, allow_pickle=allow_pickle, progress=progress, cache_dir=cache_dir)


def remote_header(ref: HubReference) -> tuple[dict | None, list[tuple[str, str, tuple, str]]] | None:
    """``(config, [(tensor name, file, shape, safetensors dtype name), ...])`` of ``ref``, read from
    the safetensors headers on the Hub (a few kilobytes each) and ``config.json``; None when offline
    or when the repository has no safetensors (then the full download decides)."""
    import json

    from huggingface_hub import hf_hub_download

    files = repo_files(ref)
    if files is None:
        return None
    prefix = f"{ref.subfolder}/" if ref.subfolder else ""
    weights = [f for f in files if f.startswith(prefix) and f.endswith(".safetensors") and "/" not in f[len(prefix) :]]
    if not weights:
        return None
    api, tensors, config = _api(), [], None
    try:
        for f in weights:
            meta = api.parse_safetensors_file_metadata(ref.repo_id, f, revision=ref.revision)
            tensors += [(name, f, tuple(t.shape), t.dtype) for name, t in meta.tensors.items()]
        if prefix + "config.json" in files:
            path = hf_hub_download(ref.repo_id, prefix + "config.json", revision=ref.revision)
            config = json.loads(Path(path).read_text())
    except Exception as e:
        raise hub_error(e, ref) from None
    return config, tensors


def revisions(ref: HubReference, pattern: str) -> list[str]:
    """The repository's branches and tags matching ``pattern`` (e.g. ``step*``), in step order.

    Offline, the revisions are those of the local cache (``refs/`` of the repository's folder).
    Step order: by the last number in the name (``step1000`` after ``step512``), then by name.
    """
    if _offline():
        from huggingface_hub import constants

        refs = Path(constants.HF_HUB_CACHE) / f"models--{ref.repo_id.replace('/', '--')}" / "refs"
        names = [str(p.relative_to(refs)) for p in refs.rglob("*") if p.is_file()] if refs.is_dir() else []
    else:
        try:
            git = _api().list_repo_refs(ref.repo_id)
        except Exception as e:
            raise hub_error(e, ref) from None
        names = [b.name for b in git.branches] + [t.name for t in git.tags]
    found = sorted({n for n in names if fnmatch.fnmatchcase(n, pattern)}, key=step_key)
    if not found:
        raise PrismError(f"no revision matches {pattern!r}", ref.repo_id)
    return found


def subfolders(ref: HubReference, pattern: str) -> list[str]:
    """The repository's top-level folders matching ``pattern`` (e.g. ``step-*``), in step order."""
    from huggingface_hub import RepoFolder

    if _offline():
        local = fetch(ref.at(), progress=False)
        names = [p.name for p in local.iterdir() if p.is_dir()]
    else:
        try:
            tree = _api().list_repo_tree(ref.repo_id, revision=ref.revision)
        except Exception as e:
            raise hub_error(e, ref) from None
        names = [t.path for t in tree if isinstance(t, RepoFolder)]
    found = sorted({n for n in names if fnmatch.fnmatchcase(n, pattern)}, key=step_key)
    if not found:
        raise PrismError(f"no folder matches {pattern!r} at {ref.revision or 'main'}", ref.repo_id)
    return found


def step_key(name: str) -> tuple:
    """Sort key of a revision or folder name: its last number (the step), then the name."""
    numbers = re.findall(r"\d+", name)
    return (int(numbers[-1]) if numbers else -1, name)


def is_cached(ref: HubReference, cache_dir: str | os.PathLike | None = None) -> bool:
    """Whether ``ref``'s weights are already in the Hub cache (then ``--evict`` leaves them there)."""
    from huggingface_hub import constants

    repo = Path(cache_dir or constants.HF_HUB_CACHE) / f"models--{ref.repo_id.replace('/', '--')}"
    rev = ref.revision or "main"
    commit = (repo / "refs" / rev).read_text().strip() if (repo / "refs" / rev).is_file() else rev
    folder = repo / "snapshots" / commit / (ref.subfolder or "")
    return folder.is_dir() and any(folder.glob("*.safetensors"))


def evict(ref: HubReference, cache_dir: str | os.PathLike | None = None) -> int:
    """Remove ``ref``'s revision from the Hub cache (its snapshot and the blobs only it uses);
    returns the bytes freed. Used by ``prism trajectory --evict`` on revisions it downloaded itself."""
    from huggingface_hub import scan_cache_dir

    info = scan_cache_dir(cache_dir)
    for repo in info.repos:
        if repo.repo_id != ref.repo_id:
            continue
        commits = [r.commit_hash for r in repo.revisions if (ref.revision or "main") in r.refs]
        commits += [r.commit_hash for r in repo.revisions if r.commit_hash == ref.revision]
        if commits:
            strategy = info.delete_revisions(*commits)
            strategy.execute()
            return strategy.expected_freed_size
    return 0
