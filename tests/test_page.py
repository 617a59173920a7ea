"""The page at / in a real headless Chromium against a real uvicorn serving the small random-weight model.

A fake microphone plays a generated speech WAV (Chromium loops it); the test records, watches live partials appear
on the page, stops, and checks the utterances and final shown against what the server sent; then drops the same
file, plays from a word, and downloads SRT, VTT and JSON. Transcripts are noise (random weights): everything is
checked for structure and consistency, never for text. A screenshot is saved as `page.png` in the test's tmp_path
and copied to `.cache/page.png` for a reviewer.

Utterances need a model that hears the pauses: one test runs a second server on the trained models/default and
speaks two phrases with a pause between them, live and as a file (`.cache/page-utterances.png`).
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.audio import speak, spoken_phrases
from tests.support.server import running_server

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "models" / "default"
PHRASES = ["turn on the kitchen lights", "what is the weather like today"]

if not CHROMIUM.exists():
    pytest.skip(
        "Debian's chromium is not installed at /usr/bin/chromium (make test installs it: apt-get install chromium)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')"
)

CHROMIUM_ARGS = [
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--autoplay-policy=no-user-gesture-required",
]

# Records what #partial showed, and when, as the page changed it (not what the page was told).
OBSERVE_PARTIALS = """() => {
  window.__shown = [];
  const el = document.getElementById("partial");
  new MutationObserver(() => window.__shown.push({text: el.textContent, t: performance.now()}))
    .observe(el, {childList: true, characterData: true, subtree: true});
}"""

# Records, at each change of the live transcript, how many finished utterances it listed and the live line's text.
OBSERVE_LIVE = """() => {
  window.__live = [];
  const list = document.getElementById("utterances");
  const partial = document.getElementById("partial");
  new MutationObserver(() => window.__live.push({utterances: list.children.length, partial: partial.textContent}))
    .observe(document.getElementById("live-transcript"), {childList: true, characterData: true, subtree: true});
}"""

MAKE_DROP = """([b64, name, type]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const dt = new DataTransfer();
  dt.items.add(new File([bytes], name, {type}));
  return dt;
}"""

CUE = re.compile(r"(\d+)\n(\d\d):(\d\d):(\d\d)[,.](\d{3}) --> (\d\d):(\d\d):(\d\d)[,.](\d{3})\n(.+)")


@pytest.fixture(scope="module")
def page_server(small_model_dir: Path) -> Iterator[str]:
    with running_server({"DS_MODEL_DIR": str(small_model_dir), "DS_BEAM_WIDTH": "64"}) as base:
        yield base


@pytest.fixture(scope="module")
def default_server() -> Iterator[str]:
    """A server on the trained models/default: the random model's noise has no pauses to cut at."""
    if not (DEFAULT_MODEL / "manifest.json").exists():
        pytest.skip("models/default is not built (make default-model)")
    with running_server({"DS_MODEL_DIR": str(DEFAULT_MODEL)}) as base:
        yield base


def launch(playwright: Any, tmp_path: Path, microphone: Path, **options: Any) -> Any:
    """Headless Chromium with a fake microphone that plays `microphone` (a WAV, looped) and a fresh profile."""
    return playwright.chromium.launch_persistent_context(
        str(tmp_path / "profile"),
        executable_path=str(CHROMIUM),
        headless=True,
        args=[*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={microphone}"],
        **options,
    )


def short_clock(seconds: float) -> str:
    """An utterance's start as the page shows it: 3.6 s is "0:03"."""
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def check_live_transcript(page: Any, utterances: list[dict[str, Any]]) -> None:
    """After the final: the live transcript lists `utterances` (what the server sent), each with its start time,
    and the live line is empty."""
    texts = page.locator("#utterances .utterance-text")
    if utterances:
        sync_api.expect(texts).to_have_text([u["text"] for u in utterances])
        times = page.locator("#utterances .utterance-time")
        sync_api.expect(times).to_have_text([short_clock(u["start"]) for u in utterances])
    else:
        sync_api.expect(texts).to_have_count(0)
    sync_api.expect(page.locator("#partial")).to_have_text("")


def paragraphs(utterances: list[dict[str, Any]], text: str) -> list[str]:
    """The result's paragraphs: one per utterance, else the whole text."""
    return [u["text"] for u in utterances if u["text"]] or [text]


def check_paragraphs(page: Any, expected: list[str]) -> None:
    sync_api.expect(page.locator("#result-text > p")).to_have_text(expected)


def parse_cues(text: str) -> list[tuple[int, float, float, str]]:
    """Cues of an SRT body (or a VTT body after its header); fails on anything that is not a well-formed cue."""
    blocks = [b for b in text.strip().split("\n\n") if b]
    cues = []
    for block in blocks:
        match = CUE.fullmatch(block)
        assert match, f"malformed cue: {block!r}"
        g = match.groups()
        start = int(g[1]) * 3600 + int(g[2]) * 60 + int(g[3]) + int(g[4]) / 1000
        end = int(g[5]) * 3600 + int(g[6]) * 60 + int(g[7]) + int(g[8]) / 1000
        cues.append((int(g[0]), start, end, g[9]))
    return cues


def check_subtitles(cues: list[tuple[int, float, float, str]], words: list[dict[str, Any]]) -> None:
    assert [c[0] for c in cues] == list(range(1, len(cues) + 1))
    previous_end = 0.0
    for _, start, end, _ in cues:
        assert previous_end <= start < end
        previous_end = end
    assert " ".join(c[3] for c in cues).split() == [w["word"] for w in words]
    if words:
        assert cues[0][1] == pytest.approx(words[0]["start"], abs=0.0011)
        assert cues[-1][2] == pytest.approx(max(words[-1]["end"], cues[-1][1] + 0.01), abs=0.0011)


def test_page_live_partials_final_upload_words_and_downloads(page_server: str, tmp_path: Path) -> None:
    base = page_server
    wav = speak("please turn on the kitchen lights and then play some quiet music", tmp_path / "speech.wav")
    index = httpx.get(f"{base}/", timeout=10)
    assert index.status_code == 200 and "text/html" in index.headers["content-type"], (
        "GET / does not serve the page: is app.routes.page installed in app/main.py?"
    )
    for asset in ("app.js", "app.css", "capture-worklet.js"):
        assert httpx.get(f"{base}/static/{asset}", timeout=10).status_code == 200
    references = re.findall(r'(?:src|href)="([^"]*)"', index.text)
    assert references and not [r for r in references if re.match(r"([a-z]+:)?//", r)], references  # no CDN
    expected_upload = httpx.post(
        f"{base}/transcribe", files={"file": ("speech.wav", wav.read_bytes(), "audio/wav")}, timeout=60
    ).json()

    problems: list[str] = []
    with sync_api.sync_playwright() as playwright:
        context = launch(
            playwright, tmp_path, wav, accept_downloads=True, viewport={"width": 1100, "height": 900}
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
            page.on(
                "response", lambda r: problems.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None
            )
            requested: list[str] = []
            page.on("request", lambda r: requested.append(r.url))
            page.goto(f"{base}/")
            sync_api.expect(page.locator("#service-info")).to_contain_text("Model", timeout=10000)
            page.evaluate(OBSERVE_PARTIALS)

            # (a) live: record from the fake microphone, partials appear while recording, then the final.
            page.get_by_role("button", name="Start recording").click()
            page.wait_for_function("window.__partials.length >= 2", timeout=20000)
            stop_at = page.evaluate("performance.now()")
            page.get_by_role("button", name="Stop recording").click()
            page.wait_for_function("window.__finals.length === 1", timeout=20000)
            log = page.evaluate("window.__sttLog")
            shown = page.evaluate("window.__shown")
            assert not log["errors"], log["errors"]
            shown_live = [s["text"] for s in shown if s["t"] < stop_at and s["text"].strip()]
            assert shown_live, f"no partial text was shown before stop: {shown}"
            assert all(text in log["partials"] for text in shown_live)  # shown = what the server sent
            final = log["finals"][0]
            assert final["type"] == "final" and final["duration"] > 0.5
            assert final["text"].strip(), "the final is empty; the test needs a transcript to check"
            check_live_transcript(page, log["utterances"])
            check_paragraphs(page, paragraphs(log["utterances"], final["text"]))
            words = page.locator("#words .word-text").all_inner_texts()
            assert words == [w["word"] for w in final["words"]]
            sync_api.expect(page.locator("#record-label")).to_have_text("Start recording")
            assert page.evaluate("document.getElementById('player').src").startswith("blob:")

            # (b) a dropped file: the same transcript as a direct upload, words with timings, click to play.
            payload = base64.b64encode(wav.read_bytes()).decode()
            drop = page.evaluate_handle(MAKE_DROP, [payload, "speech.wav", "audio/wav"])
            page.dispatch_event("#drop-zone", "drop", {"dataTransfer": drop})
            page.wait_for_function("window.__sttLog.transcriptions.length === 1", timeout=30000)
            body = page.evaluate("window.__sttLog.transcriptions[0]")
            assert body["text"] == expected_upload["text"] and body["words"] == expected_upload["words"]
            assert body["utterances"] == expected_upload["utterances"]
            words = body["words"]
            assert words, "the upload produced no words; the test needs some to click"
            check_paragraphs(page, paragraphs(body["utterances"], body["text"]))
            sync_api.expect(page.locator("#words button.word")).to_have_count(len(words))
            assert page.locator("#words .word-text").all_inner_texts() == [w["word"] for w in words]
            times = page.locator("#words .word-time").all_inner_texts()
            for shown_time, word in zip(times, words, strict=True):
                minutes, seconds = shown_time.split(":")
                assert int(minutes) * 60 + float(seconds) == pytest.approx(word["start"], abs=0.006)

            target = max(range(len(words)), key=lambda i: words[i]["start"])  # the latest word: a real seek
            page.evaluate(
                "() => { window.__seeks = []; const p = document.getElementById('player');"
                " p.addEventListener('seeked', () => window.__seeks.push(p.currentTime)); }"
            )
            button = page.locator("#words button.word").nth(target)
            button.focus()
            page.keyboard.press("Enter")  # keyboard operable: Enter on the word plays from it
            page.wait_for_function("window.__seeks.length >= 1", timeout=10000)
            seeked = page.evaluate("window.__seeks[0]")
            assert seeked == pytest.approx(words[target]["start"], abs=0.02)

            # (c) downloads: SRT, VTT and JSON of the result shown.
            downloaded: dict[str, str] = {}
            for kind in ("srt", "vtt", "json"):
                with page.expect_download() as info:
                    page.locator(f"button[data-download={kind}]").click()
                download = info.value
                assert download.suggested_filename == f"speech.{kind}"
                downloaded[kind] = Path(download.path()).read_text(encoding="utf-8")
            assert json.loads(downloaded["json"]) == body
            check_subtitles(parse_cues(downloaded["srt"]), words)
            assert downloaded["vtt"].startswith("WEBVTT\n\n")
            check_subtitles(parse_cues(downloaded["vtt"].removeprefix("WEBVTT\n\n")), words)
            assert all("," in line for line in downloaded["srt"].splitlines() if "-->" in line)

            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            page.emulate_media(color_scheme="dark")
            page.screenshot(path=str(tmp_path / "page-dark.png"), full_page=True)
            page.emulate_media(color_scheme="light")
            (ROOT / ".cache").mkdir(exist_ok=True)
            for name in ("page.png", "page-dark.png"):
                shutil.copy(tmp_path / name, ROOT / ".cache" / name)
            offsite = [
                u for u in requested if not u.startswith((f"{base}/", f"ws{base[4:]}/", "blob:", "data:"))
            ]
            assert not offsite, f"the page loaded something from elsewhere (it must work offline): {offsite}"

            # Errors are shown: the server's {"detail"} for a file it cannot decode, and a denied microphone.
            junk = base64.b64encode(b"this is not audio " * 40).decode()
            drop = page.evaluate_handle(MAKE_DROP, [junk, "notes.wav", "audio/wav"])
            page.dispatch_event("#drop-zone", "drop", {"dataTransfer": drop})
            detail = httpx.post(
                f"{base}/transcribe", files={"file": ("notes.wav", b"this is not audio " * 40)}
            ).json()
            alert = page.get_by_role("alert")
            sync_api.expect(alert).to_be_visible(timeout=10000)
            sync_api.expect(alert).to_contain_text(detail["detail"])
            sync_api.expect(alert).to_contain_text("HTTP 415")
            page.evaluate(
                "() => { navigator.mediaDevices.getUserMedia = () =>"
                " Promise.reject(new DOMException('Permission denied', 'NotAllowedError')); }"
            )
            page.get_by_role("button", name="Dismiss").click()
            page.get_by_role("button", name="Start recording").click()
            sync_api.expect(alert).to_contain_text("Microphone access was denied")
            sync_api.expect(page.locator("#record-label")).to_have_text("Start recording")
        finally:
            context.close()
    # The 415 above is the one expected failed load (the browser logs it too); anything else is a problem.
    problems = [p for p in problems if "415" not in p]
    assert not problems, problems


def test_page_asks_for_the_api_key_and_sends_it(small_model_dir: Path, tmp_path: Path) -> None:
    """With DS_API_KEY set, the page (public) asks for the key, refuses a wrong one, then sends the right one as
    `Authorization: Bearer` on uploads and as `?api_key=` on the websocket; the key is never in a URL it loads
    over HTTP."""
    wav = speak("turn on the kitchen lights", tmp_path / "speech.wav")
    key = "page-test-key-7f3a"
    env = {"DS_MODEL_DIR": str(small_model_dir), "DS_BEAM_WIDTH": "16", "DS_API_KEY": key}
    with running_server(env) as base, sync_api.sync_playwright() as playwright:
        context = launch(playwright, tmp_path, wav)
        try:
            page = context.pages[0] if context.pages else context.new_page()
            sent: list[tuple[str, str | None]] = []
            sockets: list[str] = []
            page.on("request", lambda r: sent.append((r.url, r.headers.get("authorization"))))
            page.on("websocket", lambda ws: sockets.append(ws.url))
            page.goto(f"{base}/")
            form = page.locator("#key-form")
            sync_api.expect(form).to_be_visible(timeout=10000)
            sync_api.expect(page.locator("#key-status")).to_contain_text("Enter the key")

            page.fill("#api-key", "wrong-key")
            page.get_by_role("button", name="Use this key").click()
            sync_api.expect(page.locator("#key-status")).to_contain_text("did not accept", timeout=10000)

            page.fill("#api-key", key)
            page.get_by_role("button", name="Use this key").click()
            sync_api.expect(page.locator("#service-info")).to_contain_text("Model", timeout=10000)
            sync_api.expect(form).to_be_hidden()

            payload = base64.b64encode(wav.read_bytes()).decode()
            drop = page.evaluate_handle(MAKE_DROP, [payload, "speech.wav", "audio/wav"])
            page.dispatch_event("#drop-zone", "drop", {"dataTransfer": drop})
            page.wait_for_function("window.__sttLog.transcriptions.length === 1", timeout=30000)

            page.get_by_role("button", name="Start recording").click()
            page.wait_for_function("window.__partials.length >= 1", timeout=20000)
            page.get_by_role("button", name="Stop recording").click()
            page.wait_for_function("window.__finals.length === 1", timeout=20000)
            assert not page.evaluate("window.__sttLog.errors")
        finally:
            context.close()
    uploads = [auth for url, auth in sent if url == f"{base}/transcribe"]
    assert uploads == [f"Bearer {key}"]
    assert sockets and all(url.startswith(f"ws{base[4:]}/stream?api_key={key}") for url in sockets)
    assert not [url for url, _ in sent if key in url]  # HTTP requests carry it in a header only


def test_page_shows_utterances_live_and_a_file_as_paragraphs(default_server: str, tmp_path: Path) -> None:
    """Two phrases with a pause between them: live, each finished utterance joins the list (with its start time)
    while the next is heard on the live line, and the final clears that line; as a file, one paragraph per
    utterance of /transcribe."""
    base = default_server
    # Chromium loops the fake microphone's file: a long silent tail keeps the replay's first words well after the
    # stop, so the recording holds exactly the two phrases.
    wav = spoken_phrases(PHRASES, tmp_path / "two.wav", tail=3.0)
    expected = httpx.post(
        f"{base}/transcribe", files={"file": ("two.wav", wav.read_bytes(), "audio/wav")}, timeout=60
    ).json()
    assert len(expected["utterances"]) == 2, f"models/default did not cut at the pause: {expected}"

    problems: list[str] = []
    with sync_api.sync_playwright() as playwright:
        context = launch(playwright, tmp_path, wav, viewport={"width": 1100, "height": 900})
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
            page.goto(f"{base}/")
            sync_api.expect(page.locator("#service-info")).to_contain_text("Model", timeout=10000)
            # Announced politely: the list of finished utterances, not the live line (it changes constantly).
            assert page.get_attribute("#utterances", "aria-live") == "polite"
            assert page.evaluate("document.getElementById('partial').closest('[aria-live]')") is None
            page.evaluate(OBSERVE_LIVE)

            page.get_by_role("button", name="Start recording").click()
            page.wait_for_function("window.__utterances.length >= 2", timeout=30000)
            page.get_by_role("button", name="Stop recording").click()
            page.wait_for_function("window.__finals.length === 1", timeout=20000)
            log = page.evaluate("window.__sttLog")
            assert not log["errors"], log["errors"]
            heard = log["utterances"]
            assert len(heard) == 2, heard
            check_live_transcript(page, heard)
            check_paragraphs(page, [u["text"] for u in heard])
            # While the second phrase was heard, the first stood finished in the list above it.
            live = page.evaluate("window.__live")
            assert any(s["utterances"] == 1 and s["partial"].strip() for s in live), live
            shown = [s["partial"] for s in live if s["partial"]]  # "": cleared by an utterance or the final
            assert all(text in log["partials"] for text in shown)  # the line shows what the server sent

            payload = base64.b64encode(wav.read_bytes()).decode()
            drop = page.evaluate_handle(MAKE_DROP, [payload, "two.wav", "audio/wav"])
            page.dispatch_event("#drop-zone", "drop", {"dataTransfer": drop})
            page.wait_for_function("window.__sttLog.transcriptions.length === 1", timeout=30000)
            body = page.evaluate("window.__sttLog.transcriptions[0]")
            assert body["utterances"] == expected["utterances"]
            check_paragraphs(page, [u["text"] for u in expected["utterances"]])
            sync_api.expect(page.locator("#words button.word")).to_have_count(len(body["words"]))

            page.screenshot(path=str(tmp_path / "page-utterances.png"), full_page=True)
            (ROOT / ".cache").mkdir(exist_ok=True)
            shutil.copy(tmp_path / "page-utterances.png", ROOT / ".cache" / "page-utterances.png")
        finally:
            context.close()
    assert not problems, problems
