"""Nothing on screen, in a log line or in a file reaches out or gives away a secret: a
connection test does not show what an address returned, `user:pass@` in a base URL is
masked wherever it is shown or stored, and CSV exports are safe in a spreadsheet."""

from __future__ import annotations

import base64
import csv
import io
import logging
import threading
from collections.abc import Iterator
from datetime import UTC
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest

from core import connections, usage
from core.config import make_endpoint, mask_url
from core.metering import Call
from core.providers import Message, ProviderError
from core.providers.base import log_failure, server_words
from core.ui.errors import describe
from tests.conftest import API_KEY, call_rows
from tests.test_app import app, screen_text

SECRET = "internal-only: db_password=hunter2"


class _Page(BaseHTTPRequestHandler):
    """An address that is not a model server: every path answers with a secret page."""

    status = 200

    def _answer(self) -> None:
        body = SECRET.encode()
        self.send_response(self.server.status)  # type: ignore[attr-defined]
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def secret_page() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    server.status = 200  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _url(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def _everything(err: ProviderError) -> str:
    """All an error carries, and all its sentence could show."""
    return " ".join([str(err), err.detail, repr(err.context),
                     describe(err.hint, err.context, detail=err.detail, quote=True)])


@pytest.mark.parametrize("status", [200, 404, 500])
@pytest.mark.parametrize("preset", ["ollama", "custom"])
def test_a_connection_test_never_shows_what_the_address_returned(secret_page, status, preset):
    secret_page.status = status  # type: ignore[attr-defined]
    endpoint = make_endpoint("Page", preset, base_url=_url(secret_page), api_key="none")
    with pytest.raises(ProviderError) as caught:
        connections.check(endpoint, user_id="ana")
    assert "hunter2" not in _everything(caught.value)
    if status != 200:
        assert caught.value.http_status == status


def test_settings_test_button_shows_a_status_and_a_sentence(db, monkeypatch, secret_page):
    secret_page.status = 500  # type: ignore[attr-defined]
    monkeypatch.setenv("OLLAMA_HOST", _url(secret_page))
    at = app().run()
    at.switch_page("app_pages/settings.py").run()
    at.button(key="test_Ollama").click().run()
    assert not at.exception, at.exception
    shown = screen_text(at)
    assert "HTTP 500" in shown and "hunter2" not in shown


def test_only_an_api_errors_own_message_is_kept_and_clipped():
    assert server_words({"error": {"message": "Bad key"}}) == "Bad key"
    assert server_words({"error": "model not found"}) == "model not found"
    assert server_words({"detail": "Not Found"}) == "Not Found"
    assert server_words(SECRET) == "" and server_words(["x"]) == ""
    assert server_words({"error": {"code": 1}}) == "" and server_words({"rows": [SECRET]}) == ""
    assert len(server_words({"error": "x" * 5000})) == 300


CREDENTIALED = "http://alice:s3cret-pass@127.0.0.1:{port}/v1"


def test_user_and_password_in_a_base_url_never_show_nor_stay(db, monkeypatch, openai_server,
                                                              caplog):
    url = CREDENTIALED.format(port=openai_server.url.rsplit(":", 1)[1].split("/")[0])
    endpoint = make_endpoint("Proxy", "custom", base_url=url, api_key=API_KEY)
    assert endpoint.shown_url.startswith("http://***@127.0.0.1:")
    openai_server.headers.clear()
    call = Call(endpoint, "gpt-4o-mini", [Message("user", "hi")], user_id="ana").run_sync()
    # The request itself used the credentials (httpx sends them as Basic auth)...
    sent = openai_server.headers[-1].get("Authorization") or openai_server.headers[-1].get(
        "authorization")
    assert sent == "Basic " + base64.b64encode(b"alice:s3cret-pass").decode()
    # ...the row keeps the URL without them, and the error sentence shows it masked.
    [row] = call_rows(db)
    assert row["base_url"] == endpoint.shown_url and "s3cret" not in str(row)
    assert call.error is not None
    sentence = describe(call.error.hint, call.error.context, detail=call.error.detail)
    assert "s3cret" not in sentence and "alice" not in sentence
    # A log line of a failure of ours is masked too.
    with caplog.at_level(logging.ERROR):
        try:
            raise RuntimeError(f"could not reach {url}")
        except RuntimeError as exc:
            log_failure(exc)
    assert "s3cret" not in caplog.text and "http://***@127.0.0.1" in caplog.text


def test_settings_shows_a_credentialed_url_masked(db, monkeypatch, openai_server):
    port = openai_server.url.rsplit(":", 1)[1].split("/")[0]
    monkeypatch.setenv("OPENAI_BASE_URL", CREDENTIALED.format(port=port))
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    at = app().run()
    at.switch_page("app_pages/settings.py").run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value.to_string()
    assert "s3cret" not in table and "alice" not in table and "***@127.0.0.1" in table
    labels = " ".join(e.label for e in at.expander)
    assert "s3cret" not in labels and "alice" not in labels
    assert "http://\\*\\*\\*@127.0.0.1" in labels  # stars escaped: shown as typed
    at.button(key="test_OpenAI-compatible").click().run()  # fails: Basic auth, not the key
    assert not at.exception, at.exception
    assert at.error and all("s3cret" not in e.value for e in at.error)


def test_mask_url_masks_every_url_in_a_text():
    text = "GET https://u:p@a.example/v1 then socks5://me:pw@127.0.0.1:7890, not mailto:a@b.c"
    assert mask_url(text) == ("GET https://***@a.example/v1 then socks5://***@127.0.0.1:7890, "
                              "not mailto:a@b.c")
    assert mask_url("https://host/v1?q=a@b") == "https://host/v1?q=a@b"


def test_a_model_named_like_a_formula_is_text_in_the_csv(db, openai_server):
    endpoint = make_endpoint("Fake", "custom", base_url=openai_server.url, api_key=API_KEY)
    for model in ("=1+2", "@SUM(A1)", "gpt-4o-mini"):
        Call(endpoint, model, [Message("user", "hi")], user_id="ana").run_sync()
    data = usage.export_csv("ana", usage.Filters(), UTC)
    frame = pd.read_csv(pd.io.common.BytesIO(data), encoding="utf-8-sig")
    assert sorted(frame["model"]) == ["'=1+2", "'@SUM(A1)", "gpt-4o-mini"]
    assert pd.api.types.is_numeric_dtype(frame["input_tokens"])


def test_csv_cells_are_neutralised_by_owasps_list_and_numbers_stay_numbers():
    frame = pd.DataFrame({
        "text": ["=cmd", "+1", "-2", "@x", "\tx", "\rx", "ok", None, "a=b", "x\r=cmd"],
        "number": [-1, -2.5, 3, 4, 5, 6, 7, 8, 9, 10],
    })
    data = usage.csv_bytes(frame).decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(data, newline="")))
    assert [r[0] for r in rows[1:]] == ["'=cmd", "'+1", "'-2", "'@x", "'\tx", "'\rx", "ok",
                                        "", "a=b", "x\r=cmd"]  # a CR inside stays inside
    assert ',-1.0\n' in data and ',-2.5\n' in data  # numbers unquoted: still numbers
