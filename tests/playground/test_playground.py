"""Each tab of the playground, used as a person would, against the real mesh."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.edge.conftest import edge_process, raw
from tests.playground.conftest import ROOT, SPOKEN
from tests.support import ServiceProcess

OpenPage = Callable[..., Page]
AXE = ROOT / "web" / "node_modules" / "axe-core" / "axe.min.js"
TABS = ["chat", "images", "speech", "voice", "agent", "tokenizer", "status"]
# Long enough for a reply to be stopped before it ends.
LONG_REPLY_TOKENS = 400


def test_chat_streams_and_stops(open_page: OpenPage, smol_ttt: ServiceProcess) -> None:
    page = open_page("chat")
    expect(page.get_by_label("Binding")).to_have_value("smollm2")
    page.get_by_label("Max tokens").fill(str(LONG_REPLY_TOKENS))
    page.get_by_label("Message").fill("Tell me a very long story about a lighthouse keeper.")
    with page.expect_response("**/v1/chat/completions") as answer:
        page.get_by_role("button", name="Send").click()
    reply = page.locator(".message.assistant .reply").last
    expect(reply).not_to_be_empty(timeout=120_000)
    page.get_by_role("button", name="Stop").click()
    stats = page.locator(".message.assistant .stats").last
    expect(stats.locator(".stopped")).to_be_visible()
    expect(stats).to_contain_text("first token")
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    # Stopping closed the stream, which cancelled the generation in the engine.
    request_id = answer.value.headers["x-request-id"]
    ended = smol_ttt.wait_for_event("generation ended", request_id=request_id)
    assert "cancel" in ended["outcome"]
    assert ended["completion_tokens"] < LONG_REPLY_TOKENS
    # The conversation is kept in the browser across reloads.
    page.reload()
    expect(page.locator(".message.user").last).to_contain_text("lighthouse keeper")


def test_chat_renders_markdown_without_running_html(open_page: OpenPage) -> None:
    page = open_page("chat")
    reply = (
        "**bold**\n\n```py\nx = 1\n```\n"
        '<b onclick="window.hacked=1">b</b><script>window.hacked=2</script>'
        "<img src=data:, onerror=window.hacked=3>"
    )
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": reply}]
    page.evaluate("t => localStorage.setItem('genmesh.chat', JSON.stringify({turns: t}))", turns)
    page.reload()
    shown = page.locator(".message.assistant .reply").last
    expect(shown.locator("strong")).to_have_text("bold")
    expect(shown.locator("pre code")).to_contain_text("x = 1")
    expect(shown.locator("script")).to_have_count(0)
    shown.locator("b").click()
    assert page.evaluate("window.hacked") is None


def test_image_has_the_asked_size(open_page: OpenPage) -> None:
    page = open_page("images")
    page.get_by_label("Width").fill("96")
    page.get_by_label("Height").fill("64")
    page.get_by_label("Steps").fill("4")
    page.get_by_role("button", name="Generate").click()
    picture = page.locator(".gallery img").first
    expect(picture).to_be_visible(timeout=120_000)
    size = picture.evaluate("i => i.decode().then(() => [i.naturalWidth, i.naturalHeight])")
    assert size == [96, 64]


def test_speech_plays(open_page: OpenPage) -> None:
    page = open_page("speech")
    page.get_by_label("Text", exact=True).fill("Hello from the playground.")
    page.get_by_role("button", name="Speak").click()
    audio = page.get_by_label("synthesised speech")
    expect(audio).to_be_attached(timeout=120_000)
    page.wait_for_function(
        "a => Number.isFinite(a.duration) && a.duration > 0", arg=audio.element_handle()
    )
    expect(page.get_by_role("link", name="Download WAV")).to_have_attribute(
        "download", "speech.wav"
    )


def test_microphone_is_transcribed(open_page: OpenPage) -> None:
    page = open_page("speech")
    page.get_by_role("button", name="Record from microphone").click()
    # The fake microphone says its phrase once in the first few seconds.
    page.wait_for_timeout(6_000)
    page.get_by_role("button", name="Stop recording").click()
    transcript = page.locator(".transcript")
    expect(transcript).to_be_visible(timeout=120_000)
    # Recorded as Opus and resampled, "quick" is sometimes heard as "quit" and "jumps" as
    # "jumped"; the rest holds.
    heard = " ".join(re.findall(r"[a-z]+", transcript.inner_text().lower()))
    assert re.search(r"brown fox jump\w* over the lazy dog", heard), (SPOKEN, heard)
    expect(page.locator("table tbody tr").first).to_be_visible()


def test_agent_calls_overlap_on_the_timeline(open_page: OpenPage) -> None:
    page = open_page("agent")
    program = (
        'a = generate_text("first", binding="echo")\n'
        'b = generate_text("second", binding="echo")\n'
        "[a, b]\n"
    )
    editor = page.get_by_label("llmPython program")
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    editor.fill(program)
    page.get_by_role("button", name="Run", exact=True).click()
    bars = page.locator(".timeline li")
    expect(bars).to_have_count(2, timeout=120_000)
    (s1, e1), (s2, e2) = [
        (float(b.get_attribute("data-start") or 0), float(b.get_attribute("data-end") or 0))
        for b in bars.all()
    ]
    assert s1 < e2 and s2 < e1, "the two independent calls ran one after the other"
    assert json.loads(page.locator(".result").inner_text()) == ["first", "second"]


def test_agent_error_points_to_line_and_rule(open_page: OpenPage) -> None:
    page = open_page("agent")
    editor = page.get_by_label("llmPython program")
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    editor.fill("x = 1\nimport os\nx\n")
    page.get_by_role("button", name="Run", exact=True).click()
    problem = page.locator(".error").filter(has_text="line 2")
    expect(problem).to_be_visible(timeout=60_000)
    expect(problem).to_contain_text("rule")
    expect(page.locator(".cm-lintRange-error")).to_have_count(1)


def test_tokens_are_counted(open_page: OpenPage) -> None:
    page = open_page("tokenizer")
    page.get_by_label("Text").fill("hello hello hello")
    page.get_by_role("button", name="Tokenize").click()
    count = page.locator(".count")
    expect(count).to_be_visible(timeout=60_000)
    assert int(count.inner_text()) >= 3
    expect(page.locator(".spans span")).to_have_count(int(count.inner_text()))


def test_status_shows_the_mesh(open_page: OpenPage) -> None:
    page = open_page("status")
    expect(page.locator(".router-health")).to_have_text("serving", timeout=30_000)
    expect(page.get_by_role("cell", name="smollm2").first).to_be_visible()
    expect(page.get_by_role("cell", name="router", exact=True)).to_be_visible()


def test_wrong_key_is_a_clear_error(open_page: OpenPage, request: pytest.FixtureRequest) -> None:
    # The browser itself reports the refused requests on the console.
    request.node.expected_console = ("401",)
    page = open_page("chat", key="gm-wrong-key")
    alert = page.get_by_role("alert").first
    expect(alert).to_contain_text("UNAUTHENTICATED")


def test_docs_render_both_documents(open_page: OpenPage) -> None:
    page = open_page()
    page.goto(page.url.split("#")[0] + "docs/")
    expect(page.locator(".swagger-ui .title").first).to_contain_text("genmesh edge", timeout=30_000)
    page.get_by_role("button", name="REST gateway").click()
    expect(page.locator(".swagger-ui .title").first).not_to_contain_text("genmesh edge")


@pytest.mark.parametrize("tab", TABS)
def test_tab_is_accessible(open_page: OpenPage, tab: str) -> None:
    page = open_page(tab)
    page.wait_for_load_state("networkidle")
    page.add_script_tag(path=str(AXE))
    found = page.evaluate("axe.run(document).then(r => r.violations)")
    serious = [
        (v["id"], v["help"], [n["target"] for n in v["nodes"]])
        for v in found
        if v["impact"] in ("serious", "critical")
    ]
    assert not serious, serious


def test_unbuilt_playground_says_how_to_build(
    playground_router: ServiceProcess, tmp_path: Path
) -> None:
    edge = edge_process(playground_router, web_dir=str(tmp_path))
    try:
        answer = raw(edge, "GET", "/")
        assert answer.status == 503
        assert b"make web" in answer.body
        assert raw(edge, "GET", "/health").status == 200
        assert raw(edge, "GET", "/v1/no-such-route").json()["error"]["message"] == "Not Found"
    finally:
        edge.terminate()


def test_voice_loop_answers_with_speech(open_page: OpenPage) -> None:
    page = open_page("voice")
    talk = page.get_by_role("button", name="Hold to talk")
    talk.hover()
    page.mouse.down()
    # The phrase, then enough silence for the end of the turn to be heard.
    page.wait_for_timeout(6_000)
    page.mouse.up()
    heard = page.locator(".voice-turns .message.user").filter(has_text="fox")
    expect(heard.first).to_be_visible(timeout=120_000)
    expect(page.locator(".voice-turns .message.assistant").first).not_to_be_empty(timeout=120_000)
    expect(page.locator(".spoken")).not_to_have_text("0 reply sentences spoken", timeout=120_000)
