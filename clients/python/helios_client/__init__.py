"""A client for the helios daemon: every endpoint of the control API (``docs/api.md``),
standard library only. Errors are ``HeliosError`` (or a subclass) carrying the API's
``code``.

    from helios_client import Client
    h = Client()                                   # $HELIOS_SOCKET or the default socket
    s1 = h.import_snapshot("/srv/project", label="base")
    ws = h.create_workspace("/tmp/agent", from_snapshot=s1["id"])
    s2 = h.snapshot(ws["id"], label="try-1", annotations={"visits": 1})
    h.checkout(ws["id"], s1["id"], discard=True)
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import urllib.parse
from typing import Any, Dict, List, Mapping, Optional

__all__ = [
    "Client",
    "HeliosError",
    "BadRequest",
    "NotFound",
    "Conflict",
    "Dirty",
    "InUse",
    "NoSpace",
    "default_socket",
]

Json = Dict[str, Any]


class HeliosError(Exception):
    """An error answer of the daemon: HTTP ``status``, the API's ``code`` and ``message``."""

    def __init__(self, status: int, code: str, message: str,
                 paths: Optional[List[str]] = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        #: For a merge conflict: every path that did not merge.
        self.paths: List[str] = list(paths or [])


class BadRequest(HeliosError):
    """400 ``bad_request``: malformed input; nothing changed."""


class NotFound(HeliosError):
    """404 ``not_found``: an unknown snapshot, workspace or endpoint."""


class Conflict(HeliosError):
    """409: the state forbids it (``conflict``, ``not_mounted``; see the subclasses)."""


class Dirty(Conflict):
    """409 ``dirty``: a checkout of a workspace with uncommitted changes."""


class MergeConflict(Conflict):
    """409 ``conflict`` of a merge: ``paths`` lists what both sides changed differently."""


class NoCommonAncestor(Conflict):
    """409 ``no_common_ancestor``: a merge of snapshots that share no ancestor."""


class InUse(Conflict):
    """409 ``in_use``: deleting a snapshot a workspace or a child stands on."""


class NoSpace(HeliosError):
    """507 ``no_space``: the store's disk is full."""


_BY_CODE = {"dirty": Dirty, "in_use": InUse, "no_space": NoSpace, "quota_exceeded": NoSpace,
            "not_found": NotFound,
            "bad_request": BadRequest, "no_common_ancestor": NoCommonAncestor}


def _error(status: int, code: str, message: str,
           paths: Optional[List[str]] = None) -> HeliosError:
    cls = _BY_CODE.get(code)
    if cls is None and code == "conflict" and paths:
        cls = MergeConflict
    if cls is None:
        cls = {400: BadRequest, 404: NotFound, 409: Conflict, 507: NoSpace}.get(status, HeliosError)
    return cls(status, code, message, paths)


def default_socket() -> str:
    """The socket the CLI uses: ``$HELIOS_SOCKET``, else ``/run/helios/helios.sock`` as root,
    else ``$XDG_RUNTIME_DIR/helios.sock``."""
    env = os.environ.get("HELIOS_SOCKET")
    if env:
        return env
    if os.geteuid() == 0:
        return "/run/helios/helios.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR", f"/run/user/{os.geteuid()}")
    return os.path.join(runtime, "helios.sock")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("helios", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


class Client:
    """One keep-alive connection to the daemon (not shared between threads: make one
    client per thread)."""

    def __init__(self, socket_path: Optional[str] = None, timeout: float = 120.0) -> None:
        self.socket_path = socket_path or default_socket()
        self.timeout = timeout
        self._conn: Optional[_UnixConnection] = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- transport ----

    def request(self, method: str, path: str, body: Optional[Mapping[str, Any]] = None) -> Any:
        """Sends one request; returns the decoded JSON answer (``None`` for 204, text for
        ``/metrics``); raises ``HeliosError`` for an error answer."""
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = _UnixConnection(self.socket_path, self.timeout)
            try:
                self._conn.request(method, path, body=payload, headers=headers)
                resp = self._conn.getresponse()
                data = resp.read()
                break
            except (ConnectionError, http.client.RemoteDisconnected, BrokenPipeError):
                # A keep-alive connection the daemon closed: once more on a new one.
                self.close()
                if attempt:
                    raise
        if resp.status >= 400:
            try:
                err = json.loads(data)["error"]
                raise _error(resp.status, err.get("code", ""), err.get("message", ""),
                             err.get("paths"))
            except (ValueError, KeyError, TypeError):
                raise HeliosError(resp.status, "", data.decode(errors="replace")) from None
        if resp.status == 204 or not data:
            return None
        if resp.getheader("Content-Type", "").startswith("application/json"):
            return json.loads(data)
        return data.decode()

    # ---- system ----

    def health(self) -> Json:
        return self.request("GET", "/v1/health")

    def stats(self) -> Json:
        return self.request("GET", "/v1/stats")

    def metrics(self) -> str:
        """Prometheus text."""
        return self.request("GET", "/metrics")

    def gc(self) -> Json:
        return self.request("POST", "/v1/gc")

    def pack(self) -> Json:
        """Packs the snapshots taken since the last pack (the daemon also does it in
        the background): objects rewritten as zstd or as deltas."""
        return self.request("POST", "/v1/pack")

    def fsck(self) -> Json:
        return self.request("POST", "/v1/fsck")

    # ---- snapshots ----

    def import_snapshot(self, path: str, label: Optional[str] = None) -> Json:
        """Imports the directory ``path`` (absolute) as a new root snapshot."""
        body: Json = {"path": os.path.abspath(path)}
        if label is not None:
            body["label"] = label
        return self.request("POST", "/v1/snapshots/import", body)

    def snapshots(self, parent: Optional[str] = None, root: Optional[str] = None) -> List[Json]:
        query = {k: v for k, v in (("parent", parent), ("root", root)) if v is not None}
        path = "/v1/snapshots" + ("?" + urllib.parse.urlencode(query) if query else "")
        return self.request("GET", path)

    def get_snapshot(self, snapshot: str) -> Json:
        return self.request("GET", f"/v1/snapshots/{snapshot}")

    def annotate(self, snapshot: str, label: Optional[str] = None,
                 annotations: Optional[Mapping[str, Any]] = None,
                 durability: Optional[str] = None) -> Json:
        """Sets the label and merges annotations (a ``None`` value removes a key).
        ``durability``: ``sync`` (default) or ``buffered``."""
        body: Json = {}
        if durability is not None:
            body["durability"] = durability
        if label is not None:
            body["label"] = label
        if annotations is not None:
            body["annotations"] = dict(annotations)
        return self.request("PATCH", f"/v1/snapshots/{snapshot}", body)

    def delete_snapshot(self, snapshot: str, recursive: bool = False) -> List[str]:
        q = "?recursive=true" if recursive else ""
        return self.request("DELETE", f"/v1/snapshots/{snapshot}{q}")["removed"]

    def diff(self, a: str, b: str) -> List[Json]:
        return self.request("GET", f"/v1/snapshots/{a}/diff/{b}")["changes"]

    def merge(self, a: str, b: str, into: Optional[str] = None, label: Optional[str] = None,
              annotations: Optional[Mapping[str, Any]] = None,
              durability: Optional[str] = None) -> Json:
        """Merges snapshot ``b`` into ``a`` (three-way, against their common ancestor): a
        new snapshot, child of ``a``. ``into``: a workspace id (with no uncommitted
        changes) to check out to the merge. Raises ``MergeConflict`` (with ``paths``),
        ``NoCommonAncestor``, ``Dirty`` or ``NotFound``; nothing is written then."""
        body: Json = {}
        for key, value in (("into", into), ("label", label), ("durability", durability)):
            if value is not None:
                body[key] = value
        if annotations is not None:
            body["annotations"] = dict(annotations)
        return self.request("POST", f"/v1/snapshots/{a}/merge/{b}", body)

    def export(self, snapshot: str, path: str) -> str:
        return self.request("POST", f"/v1/snapshots/{snapshot}/export",
                            {"path": os.path.abspath(path)})["path"]

    def warm(self, snapshot: str) -> Json:
        """Makes forks of ``snapshot`` fast (a native lower layer for the overlay engine)."""
        return self.request("POST", f"/v1/snapshots/{snapshot}/warm")

    # ---- workspaces ----

    def create_workspace(self, mountpoint: str, from_snapshot: Optional[str] = None,
                         engine: Optional[str] = None, quota_bytes: Optional[int] = None,
                         quota_inodes: Optional[int] = None) -> Json:
        """Forks ``from_snapshot`` (or an empty tree) and mounts it at ``mountpoint`` (an
        existing empty directory). ``engine``: ``auto`` (default), ``fuse`` or ``overlay``.
        ``quota_bytes`` / ``quota_inodes``: limits (fuse engine); past one, writes in the
        workspace get EDQUOT."""
        body: Json = {"mountpoint": os.path.abspath(mountpoint)}
        if from_snapshot is not None:
            body["from"] = from_snapshot
        if engine is not None:
            body["engine"] = engine
        if quota_bytes is not None or quota_inodes is not None:
            body["quota"] = {"bytes": quota_bytes, "inodes": quota_inodes}
        return self.request("POST", "/v1/workspaces", body)

    def set_quota(self, workspace: str, bytes: Optional[int] = None,
                  inodes: Optional[int] = None) -> Json:
        """Sets a workspace's limits (both ``None``: removes them); returns the workspace,
        with its ``quota`` and ``usage``."""
        return self.request("PUT", f"/v1/workspaces/{workspace}/quota",
                            {"bytes": bytes, "inodes": inodes})

    def workspaces(self) -> List[Json]:
        return self.request("GET", "/v1/workspaces")

    def get_workspace(self, workspace: str) -> Json:
        return self.request("GET", f"/v1/workspaces/{workspace}")

    def snapshot(self, workspace: str, label: Optional[str] = None,
                 annotations: Optional[Mapping[str, Any]] = None,
                 durability: Optional[str] = None) -> Json:
        """Snapshots a workspace. ``durability``: ``sync`` (default) or ``buffered``."""
        body: Json = {}
        if label is not None:
            body["label"] = label
        if annotations is not None:
            body["annotations"] = dict(annotations)
        if durability is not None:
            body["durability"] = durability
        return self.request("POST", f"/v1/workspaces/{workspace}/snapshot", body)

    def checkout(self, workspace: str, snapshot: str, discard: bool = False) -> Json:
        return self.request("POST", f"/v1/workspaces/{workspace}/checkout",
                            {"snapshot": snapshot, "discard": discard})

    def requests(self, workspace: str) -> Json:
        """FUSE requests the workspace's mount served, by opcode."""
        return self.request("GET", f"/v1/workspaces/{workspace}/requests")

    def delete_workspace(self, workspace: str) -> None:
        """Unmounts and deletes a workspace (uncommitted changes are dropped)."""
        self.request("DELETE", f"/v1/workspaces/{workspace}")
