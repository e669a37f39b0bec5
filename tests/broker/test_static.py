"""``--static DIR`` over real HTTP against a real broker: files only, byte ranges, nothing outside the folder."""

from __future__ import annotations

import http.client
import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.broker.conftest import TIMEOUT, RunningBroker

BODY = bytes(range(256)) * 1024  # 256 KiB: larger than one write, so the writer pauses and resumes


@pytest.fixture
def site(tmp_path: Path, start_broker: Callable[..., RunningBroker]) -> tuple[RunningBroker, Path]:
    """A broker serving ``tmp_path/site``, with a secret file beside that folder."""
    folder = tmp_path / "site"
    (folder / "docs").mkdir(parents=True)
    (folder / "index.html").write_text("<p>home</p>")
    (folder / "app.js").write_text("console.log('hi');")
    (folder / "data.bin").write_bytes(BODY)
    (folder / "empty.txt").write_bytes(b"")
    (folder / "docs" / "index.html").write_text("<p>docs</p>")
    (folder / "nolisting").mkdir()
    (folder / "nolisting" / "file.txt").write_text("listed nowhere")
    (folder / ".env").write_text("SECRET=1")
    (tmp_path / "secret.txt").write_text("outside the folder")
    return start_broker(static=str(folder)), folder


def get(broker: RunningBroker, path: str, method: str = "GET",
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request with ``path`` sent exactly as given (http.client does not normalise it)."""
    connection = http.client.HTTPConnection("127.0.0.1", broker.ws_port, timeout=TIMEOUT)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def raw(broker: RunningBroker, target: bytes) -> bytes:
    """The status line of a request whose target is sent byte for byte."""
    with socket.create_connection(("127.0.0.1", broker.ws_port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.split(b"\r\n", 1)[0]


def test_files_and_indexes(site: tuple[RunningBroker, Path]) -> None:
    broker, _ = site
    status, headers, body = get(broker, "/")
    assert (status, body) == (200, b"<p>home</p>")
    assert headers["content-type"].startswith("text/html")
    status, headers, body = get(broker, "/app.js")
    assert (status, body) == (200, b"console.log('hi');")
    assert "javascript" in headers["content-type"]
    status, headers, body = get(broker, "/data.bin")
    assert (status, body, headers["accept-ranges"]) == (200, BODY, "bytes")
    assert headers["content-length"] == str(len(BODY))
    assert get(broker, "/docs/")[::2] == (200, b"<p>docs</p>")
    assert get(broker, "/empty.txt")[::2] == (200, b"")


def test_a_directory_url_without_its_slash_is_redirected(site: tuple[RunningBroker, Path]) -> None:
    broker, _ = site
    status, headers, _ = get(broker, "/docs?x=1")
    assert status == 302 and headers["location"] == "/docs/?x=1"


def test_head_has_the_headers_and_no_body(site: tuple[RunningBroker, Path]) -> None:
    broker, _ = site
    status, headers, body = get(broker, "/data.bin", "HEAD", {"Range": "bytes=0-9"})  # Range is for GET only
    assert (status, body, headers["content-length"]) == (200, b"", str(len(BODY)))


def test_other_methods_are_refused(site: tuple[RunningBroker, Path]) -> None:
    broker, _ = site
    status, headers, _ = get(broker, "/app.js", "POST")
    assert (status, headers["allow"]) == (405, "GET, HEAD")


@pytest.mark.parametrize("path", ["/nolisting/", "/nolisting", "/docs/../nolisting/", "/missing.html",
                                  "/app.js/", "/.env", "/docs/.hidden"])
def test_no_listing_and_nothing_unnamed(site: tuple[RunningBroker, Path], path: str) -> None:
    broker, _ = site
    status, _, body = get(broker, path)
    assert status == 404
    assert b"file.txt" not in body


@pytest.mark.parametrize("target", [b"/../secret.txt", b"/docs/../../secret.txt", b"/%2e%2e/secret.txt",
                                    b"/%2E%2E/secret.txt", b"/docs/%2e%2e/%2e%2e/secret.txt",
                                    b"/..%2fsecret.txt", b"/%2e%2e%2fsecret.txt", b"/docs/..%5c..%5csecret.txt",
                                    b"/app.js%00", b"//etc/passwd", b"/%2fetc%2fpasswd"])
def test_no_path_traversal(site: tuple[RunningBroker, Path], target: bytes) -> None:
    broker, _ = site
    assert raw(broker, target).split(b" ")[1] == b"404"


def test_symlinks_inside_are_followed_and_out_of_the_folder_refused(site: tuple[RunningBroker, Path]) -> None:
    broker, folder = site
    os.symlink(folder / "app.js", folder / "alias.js")
    os.symlink(folder.parent / "secret.txt", folder / "leak.txt")
    os.symlink(folder.parent, folder / "up")
    assert get(broker, "/alias.js")[::2] == (200, b"console.log('hi');")
    assert get(broker, "/leak.txt")[0] == 404
    assert get(broker, "/up/secret.txt")[0] == 404
    assert get(broker, "/up/site/app.js")[::2] == (200, b"console.log('hi');")  # out and back in: inside


def test_only_regular_files(site: tuple[RunningBroker, Path]) -> None:
    broker, folder = site
    os.mkfifo(folder / "pipe")  # opening it would block the broker
    assert get(broker, "/pipe")[0] == 404


@pytest.mark.parametrize("spec, first, last", [
    ("bytes=0-9", 0, 9),
    ("bytes=1000-", 1000, len(BODY) - 1),
    ("bytes=-100", len(BODY) - 100, len(BODY) - 1),
    ("bytes=-999999999", 0, len(BODY) - 1),
    ("bytes=262000-999999", 262000, len(BODY) - 1),
    ("BYTES = 5-5", 5, 5),
])
def test_a_single_range_is_206_with_content_range(site: tuple[RunningBroker, Path], spec: str, first: int,
                                                  last: int) -> None:
    broker, _ = site
    status, headers, body = get(broker, "/data.bin", headers={"Range": spec})
    assert status == 206
    assert headers["content-range"] == f"bytes {first}-{last}/{len(BODY)}"
    assert headers["content-length"] == str(last - first + 1)
    assert body == BODY[first:last + 1]


@pytest.mark.parametrize("path, spec", [("/data.bin", f"bytes={len(BODY)}-"), ("/data.bin", "bytes=999999-1000000"),
                                        ("/data.bin", "bytes=-0"), ("/empty.txt", "bytes=0-0")])
def test_an_unsatisfiable_range_is_416(site: tuple[RunningBroker, Path], path: str, spec: str) -> None:
    broker, folder = site
    status, headers, body = get(broker, path, headers={"Range": spec})
    assert (status, body) == (416, b"")
    assert headers["content-range"] == f"bytes */{(folder / path[1:]).stat().st_size}"


@pytest.mark.parametrize("spec", ["bytes=0-9,20-29", "bytes=9-0", "items=0-9", "bytes=abc", "bytes=",
                                  "bytes=\u00b2-4"])
def test_other_ranges_get_the_whole_file(site: tuple[RunningBroker, Path], spec: str) -> None:
    broker, _ = site
    status, headers, body = get(broker, "/data.bin", headers={"Range": spec})
    assert (status, body) == (200, BODY)
    assert "content-range" not in headers


def test_if_range_and_if_modified_since(site: tuple[RunningBroker, Path]) -> None:
    broker, _ = site
    _, headers, _ = get(broker, "/data.bin")
    modified = headers["last-modified"]
    assert get(broker, "/data.bin", headers={"Range": "bytes=0-0", "If-Range": modified})[0] == 206
    stale = get(broker, "/data.bin", headers={"Range": "bytes=0-0", "If-Range": "Thu, 01 Jan 1970 00:00:00 GMT"})
    assert stale[0] == 200 and stale[2] == BODY
    assert get(broker, "/data.bin", headers={"Range": "bytes=0-0", "If-Range": '"an-etag"'})[0] == 200
    assert get(broker, "/data.bin", headers={"If-Modified-Since": modified})[::2] == (304, b"")


def test_a_client_that_leaves_mid_file_does_not_disturb_the_next(site: tuple[RunningBroker, Path]) -> None:
    broker, folder = site
    (folder / "big.bin").write_bytes(b"x" * (8 * 1024 * 1024))
    with socket.create_connection(("127.0.0.1", broker.ws_port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    assert get(broker, "/data.bin")[::2] == (200, BODY)
