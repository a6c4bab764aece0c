"""Test doubles of the Hugging Face Hub: its cache layout on disk, and a tiny Hub server on loopback.

- :func:`write_hub_cache` lays out checkpoints the way ``huggingface_hub`` caches them
  (``models--org--name/{blobs,snapshots/<commit>,refs/<revision>}``), so references resolve with
  ``HF_HUB_OFFLINE=1`` exactly as a user's cache does.
- :class:`FakeHub` serves repositories over HTTP on 127.0.0.1 (``HF_ENDPOINT``) with the handful of
  endpoints ``huggingface_hub`` uses to list, read headers from and download a repository, so the
  download path itself runs for real. It records every request and the bytes it served.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


def repo_folder(cache: Path, repo_id: str) -> Path:
    return Path(cache) / f"models--{repo_id.replace('/', '--')}"


def commit_of(repo_id: str, revision: str) -> str:
    return hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()


def files_of(tree: dict[str, Path]) -> dict[str, bytes]:
    """{path in repo: bytes} from {subfolder or "": local checkpoint directory}."""
    out = {}
    for prefix, folder in tree.items():
        for f in sorted(Path(folder).rglob("*")):
            if f.is_file():
                rel = str(f.relative_to(folder))
                out[f"{prefix}/{rel}" if prefix else rel] = f.read_bytes()
    return out


def write_hub_cache(cache: Path, repo_id: str, revisions: dict[str, dict[str, Path]]) -> Path:
    """Cache ``revisions`` (revision -> {subfolder or "": checkpoint dir}) of ``repo_id`` as the Hub
    client would after downloading them; returns the repository's cache folder."""
    repo = repo_folder(cache, repo_id)
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    for revision, tree in revisions.items():
        commit = commit_of(repo_id, revision)
        for path, data in files_of(tree).items():
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            link = repo / "snapshots" / commit / path
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(os.path.relpath(blob, link.parent))
        ref = repo / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit)
    return repo


class FakeHub:
    """A Hub on loopback. ``repos``: repo id -> revision -> {subfolder or "": checkpoint dir}.

    ``gated``: repo ids that answer 403 as a gated repository does without a token.
    """

    def __init__(self, repos: dict[str, dict[str, dict[str, Path]]], gated=()):
        self.repos = {
            repo: {rev: (commit_of(repo, rev), files_of(tree)) for rev, tree in revs.items()}
            for repo, revs in repos.items()
        }
        self.gated = set(gated)
        self.requests: list[str] = []
        self.bytes_served = 0
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub._serve(self, head=True)

            def do_GET(self):
                hub._serve(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- routing ------------------------------------------------------------------------------------
    def _revision(self, repo: str, rev: str):
        revs = self.repos[repo]
        if rev in revs:
            return rev, *revs[rev]
        for name, (commit, files) in revs.items():
            if commit == rev:
                return name, commit, files
        return None

    def _serve(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        url = urlparse(h.path)
        path = unquote(url.path)
        rng = h.headers.get("Range")
        self.requests.append(f"{h.command} {path}" + (f" [{rng}]" if rng else ""))
        m = re.match(r"^/api/models/([^/]+/[^/]+)(/.*)?$", path)
        if m:
            return self._api(h, m.group(1), m.group(2) or "")
        m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if m:
            return self._file(h, m.group(1), m.group(2), m.group(3), head)
        self._send(h, 404, {"error": "not found"})

    def _send(self, h, status: int, body, headers: dict | None = None) -> None:
        data = json.dumps(body).encode() if not isinstance(body, bytes) else body
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        if not isinstance(body, bytes):
            h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)

    def _refuse(self, h, repo: str) -> bool:
        if repo not in self.repos:
            self._send(h, 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            return True
        if repo in self.gated:
            self._send(h, 403, {"error": "Access to this model is restricted"}, {"X-Error-Code": "GatedRepo"})
            return True
        return False

    def _api(self, h, repo: str, rest: str) -> None:
        if self._refuse(h, repo):
            return
        if rest == "/refs":
            branches = [
                {"name": r, "ref": f"refs/heads/{r}", "targetCommit": c} for r, (c, _) in self.repos[repo].items()
            ]
            return self._send(h, 200, {"branches": branches, "tags": [], "converts": []})
        m = re.match(r"^/(?:revision|tree)/([^/]+)(/.*)?$", rest)
        rev = unquote(m.group(1)) if m else "main"
        found = self._revision(repo, rev)
        if found is None:
            return self._send(h, 404, {"error": "Revision not found"}, {"X-Error-Code": "RevisionNotFound"})
        _, commit, files = found
        if rest.startswith("/tree/"):
            under = (m.group(2) or "").strip("/")
            entries, folders = [], set()
            for p, data in files.items():
                if under and not p.startswith(under + "/"):
                    continue
                rel = p[len(under) + 1 :] if under else p
                if "/" in rel and "recursive=true" not in (urlparse(h.path).query or ""):
                    folders.add((under + "/" if under else "") + rel.split("/")[0])
                    continue
                oid = hashlib.sha1(data).hexdigest()
                entries.append({"type": "file", "oid": oid, "size": len(data), "path": p})
            entries += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": f} for f in sorted(folders)]
            return self._send(h, 200, entries)
        siblings = [{"rfilename": p} for p in files]
        return self._send(h, 200, {"id": repo, "modelId": repo, "sha": commit, "siblings": siblings, "private": False})

    def _file(self, h, repo: str, rev: str, path: str, head: bool) -> None:
        if self._refuse(h, repo):
            return
        found = self._revision(repo, unquote(rev))
        if found is None:
            return self._send(h, 404, {"error": "Revision not found"}, {"X-Error-Code": "RevisionNotFound"})
        _, commit, files = found
        if path not in files:
            return self._send(h, 404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
        data = files[path]
        etag = hashlib.sha256(data).hexdigest()
        headers = {"X-Repo-Commit": commit, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        rng = h.headers.get("Range")
        status = 200
        if rng and not head:
            a, b = re.match(r"bytes=(\d+)-(\d*)", rng).groups()
            a, b = int(a), int(b) if b else len(data) - 1
            data = data[a : b + 1]
            headers["Content-Range"] = f"bytes {a}-{a + len(data) - 1}/{len(files[path])}"
            status = 206
        if not head:
            self.bytes_served += len(data)
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data) if not head else len(files[path])))
        h.end_headers()
        if not head:
            h.wfile.write(data)
