// The page for people: live transcription from the microphone over websocket /stream, and file transcription
// with POST /transcribe; word timings to play from, subtitles and JSON to download. No dependencies.
"use strict";

(() => {
  const FRAME_SECONDS = 0.1; // ~0.1 s of audio per binary websocket frame
  const MIN_RATE = 8000;
  const MAX_RATE = 48000; // the server resamples 8–48 kHz itself (soxr); above that the worklet downsamples
  const FALLBACK_RATE = 16000;
  const FINAL_TIMEOUT_MS = 60000;

  // What the page received, for debugging in the console and for the browser test.
  const log = { partials: [], utterances: [], finals: [], errors: [], transcriptions: [] };
  window.__sttLog = log;
  window.__partials = log.partials;
  window.__utterances = log.utterances; // each utterance message, and the final's utterance when it has one
  window.__finals = log.finals;

  const $ = (id) => document.getElementById(id);
  const ui = {
    serviceInfo: $("service-info"),
    keyForm: $("key-form"),
    keyInput: $("api-key"),
    keyRemember: $("api-key-remember"),
    keyStatus: $("key-status"),
    modelWarning: $("model-warning"),
    error: $("error"),
    errorText: $("error-text"),
    errorDismiss: $("error-dismiss"),
    record: $("record"),
    recordLabel: $("record-label"),
    recordStatus: $("record-status"),
    level: $("level"),
    liveTranscript: $("live-transcript"),
    utterances: $("utterances"),
    partial: $("partial"),
    dropZone: $("drop-zone"),
    fileInput: $("file-input"),
    fileStatus: $("file-status"),
    result: $("result"),
    resultMeta: $("result-meta"),
    resultText: $("result-text"),
    player: $("player"),
    words: $("words"),
    noWords: $("no-words"),
  };

  // ---------------------------------------------------------------- errors

  function showError(message) {
    log.errors.push(message);
    ui.errorText.textContent = message;
    ui.error.hidden = false;
  }

  function clearError() {
    ui.error.hidden = true;
    ui.errorText.textContent = "";
  }

  ui.errorDismiss.addEventListener("click", clearError);
  ui.keyForm.addEventListener("submit", useKey);

  // FastAPI's {"detail": "..."} (or a list of validation problems), OpenAI-style {"error": {"message"}}.
  function detailText(body, response) {
    if (body && typeof body.detail === "string") return body.detail;
    if (body && Array.isArray(body.detail)) {
      return body.detail.map((d) => [(d.loc || []).join("."), d.msg].filter(Boolean).join(": ")).join("; ");
    }
    if (body && body.error && body.error.message) return body.error.message;
    return response.statusText || "unknown error";
  }

  function micErrorMessage(err) {
    switch (err && err.name) {
      case "NotAllowedError":
      case "SecurityError":
        return "Microphone access was denied. Allow the microphone for this site in the browser's settings, then try again.";
      case "NotFoundError":
      case "OverconstrainedError":
        return "No microphone was found. Connect one and try again.";
      case "NotReadableError":
      case "AbortError":
        return "The microphone could not be opened; another application may be using it.";
      default:
        return `The microphone could not be started: ${err && err.message ? err.message : err}`;
    }
  }

  // ---------------------------------------------------------------- API key

  // A server with DS_API_KEY answers 401 until the key comes with each request: `Authorization: Bearer` for
  // fetch, `?api_key=` for the websocket (browsers cannot set its headers). The key is asked for once and kept
  // for this tab (sessionStorage), or on this browser if the user ticks "remember" (localStorage). A link may
  // carry it as `#api_key=...`: a fragment never reaches the server or its logs.
  const KEY_STORE = "ds-api-key";
  let apiKey = sessionStorage.getItem(KEY_STORE) || localStorage.getItem(KEY_STORE) || "";
  const fragmentKey = new URLSearchParams(window.location.hash.slice(1)).get("api_key");
  if (fragmentKey) {
    apiKey = fragmentKey;
    sessionStorage.setItem(KEY_STORE, apiKey);
    history.replaceState(null, "", window.location.pathname + window.location.search);
  }

  function authHeaders(headers) {
    return apiKey ? { ...headers, Authorization: `Bearer ${apiKey}` } : headers;
  }

  function askForKey(message) {
    ui.keyForm.hidden = false;
    ui.keyStatus.textContent = message;
    ui.keyInput.focus();
  }

  function useKey(event) {
    event.preventDefault();
    apiKey = ui.keyInput.value.trim();
    ui.keyInput.value = "";
    sessionStorage.setItem(KEY_STORE, apiKey);
    if (ui.keyRemember.checked) localStorage.setItem(KEY_STORE, apiKey);
    else localStorage.removeItem(KEY_STORE);
    ui.keyStatus.textContent = "Checking the key…";
    loadInfo();
  }

  // ---------------------------------------------------------------- service info

  async function loadInfo() {
    try {
      const response = await fetch("info", { headers: authHeaders({ Accept: "application/json" }) });
      if (response.status === 401) {
        sessionStorage.removeItem(KEY_STORE);
        localStorage.removeItem(KEY_STORE);
        const wasSet = Boolean(apiKey);
        apiKey = "";
        askForKey(wasSet ? "The server did not accept that key. Check it and try again." : "Enter the key to use this page.");
        ui.serviceInfo.textContent = "This server needs an API key.";
        return;
      }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      ui.keyForm.hidden = true;
      ui.keyStatus.textContent = "";
      const info = await response.json();
      const model = info.model || {};
      const runtime = info.runtime || {};
      const decoder = info.decoder || {};
      const parts = [`Model ${model.name || "?"}`, `${runtime.backend || "?"} backend`];
      if (runtime.compute_units) parts.push(runtime.compute_units);
      if (decoder.kind === "beam") parts.push(`beam search ${decoder.beam_width}${decoder.scorer ? " with a language model" : ""}`);
      else if (decoder.kind) parts.push(`${decoder.kind} decoding`);
      ui.serviceInfo.textContent = `${parts.join(" · ")}. Audio never leaves this server.`;
      const source = model.source && model.source.name;
      if (typeof source === "string" && source.startsWith("random-")) {
        ui.modelWarning.textContent =
          "This server runs a random-weight placeholder model: its transcripts are noise. Convert a real DeepSpeech model (see the README).";
        ui.modelWarning.hidden = false;
      }
    } catch (err) {
      ui.serviceInfo.textContent = `Could not read the service information (${err.message}).`;
    }
  }

  // ---------------------------------------------------------------- formatting

  function clock(seconds) {
    const total = Math.max(0, seconds);
    const m = Math.floor(total / 60);
    const s = total - m * 60;
    return `${m}:${s.toFixed(2).padStart(5, "0")}`;
  }

  // Where an utterance starts, to the second: "0:03", "12:40", "1:02:03".
  function shortClock(seconds) {
    const total = Math.floor(Math.max(0, seconds));
    const h = Math.floor(total / 3600);
    const m = Math.floor((total % 3600) / 60);
    const s = String(total % 60).padStart(2, "0");
    return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
  }

  function timestamp(seconds, separator) {
    const ms = Math.max(0, Math.round(seconds * 1000));
    const h = Math.floor(ms / 3600000);
    const m = Math.floor((ms % 3600000) / 60000);
    const s = Math.floor((ms % 60000) / 1000);
    const pad = (n, w) => String(n).padStart(w, "0");
    return `${pad(h, 2)}:${pad(m, 2)}:${pad(s, 2)}${separator}${pad(ms % 1000, 3)}`;
  }

  // Subtitle cues from word timings: a new cue after a pause, or when a cue gets long (42 characters, 5 s).
  function cuesFromWords(words) {
    const cues = [];
    let cue = null;
    let previousEnd = 0;
    for (const w of words) {
      const start = Math.max(w.start, previousEnd);
      const end = Math.max(w.end, start + 0.01);
      if (cue && (start - cue.end > 1.0 || end - cue.start > 5 || cue.text.length + 1 + w.word.length > 42)) {
        cues.push(cue);
        cue = null;
      }
      if (cue) {
        cue.text += ` ${w.word}`;
        cue.end = end;
      } else {
        cue = { start, end, text: w.word };
      }
      previousEnd = end;
    }
    if (cue) cues.push(cue);
    return cues;
  }

  function toSrt(words) {
    return cuesFromWords(words)
      .map((c, i) => `${i + 1}\n${timestamp(c.start, ",")} --> ${timestamp(c.end, ",")}\n${c.text}\n`)
      .join("\n");
  }

  function toVtt(words) {
    const escape = (t) => t.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
    const body = cuesFromWords(words)
      .map((c, i) => `${i + 1}\n${timestamp(c.start, ".")} --> ${timestamp(c.end, ".")}\n${escape(c.text)}\n`)
      .join("\n");
    return `WEBVTT\n\n${body}`;
  }

  // 16-bit PCM mono WAV from the recorded frames, so a live recording can be played back word by word.
  function wavBlob(chunks, rate) {
    const samples = chunks.reduce((n, c) => n + c.length, 0);
    const buffer = new ArrayBuffer(44 + samples * 2);
    const view = new DataView(buffer);
    const text = (offset, s) => [...s].forEach((ch, i) => view.setUint8(offset + i, ch.charCodeAt(0)));
    text(0, "RIFF");
    view.setUint32(4, 36 + samples * 2, true);
    text(8, "WAVE");
    text(12, "fmt ");
    view.setUint32(16, 16, true);
    view.setUint16(20, 1, true); // PCM
    view.setUint16(22, 1, true); // mono
    view.setUint32(24, rate, true);
    view.setUint32(28, rate * 2, true);
    view.setUint16(32, 2, true);
    view.setUint16(34, 16, true);
    text(36, "data");
    view.setUint32(40, samples * 2, true);
    const pcm = new Int16Array(buffer, 44);
    let offset = 0;
    for (const c of chunks) {
      pcm.set(c, offset);
      offset += c.length;
    }
    return new Blob([buffer], { type: "audio/wav" });
  }

  // ---------------------------------------------------------------- the result: text, words, player, downloads

  let current = null; // {name, data: {text, words, ...}, audioUrl}

  // The transcript as paragraphs, one per utterance (the server cuts at pauses), so a long recording reads as
  // the speaker paused rather than as one block; the whole text as one when there are none (an older server).
  function showParagraphs(data, utterances) {
    const texts = (Array.isArray(utterances) ? utterances : []).map((u) => u.text).filter(Boolean);
    if (!texts.length && data.text) texts.push(data.text);
    ui.resultText.classList.toggle("empty", !texts.length);
    if (!texts.length) texts.push("(nothing recognised)");
    ui.resultText.replaceChildren(
      ...texts.map((text) => {
        const paragraph = document.createElement("p");
        paragraph.textContent = text;
        return paragraph;
      }),
    );
  }

  // `utterances`: [{text, start, ...}] to show as paragraphs (/transcribe's list, or a recording's utterances).
  function showResult(name, description, data, audioUrl, utterances) {
    if (current && current.audioUrl) URL.revokeObjectURL(current.audioUrl);
    current = { name, data, audioUrl };
    const words = Array.isArray(data.words) ? data.words : [];
    const meta = [description, `${Number(data.duration || 0).toFixed(1)} s of audio`, `${words.length} words`];
    if (typeof data.confidence === "number") meta.push(`confidence ${data.confidence.toFixed(2)}`);
    if (typeof data.processing_seconds === "number") meta.push(`processed in ${data.processing_seconds.toFixed(2)} s`);
    ui.resultMeta.textContent = meta.join(" · ");
    showParagraphs(data, utterances);

    ui.words.replaceChildren(
      ...words.map((w, index) => {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "word";
        button.dataset.index = String(index);
        button.dataset.start = String(w.start);
        button.dataset.end = String(w.end);
        const label = document.createElement("span");
        label.className = "word-text";
        label.textContent = w.word;
        const time = document.createElement("span");
        time.className = "word-time";
        time.textContent = clock(w.start);
        button.append(label, time);
        button.title = `${clock(w.start)}–${clock(w.end)}, confidence ${Number(w.confidence ?? 0).toFixed(2)}`;
        button.setAttribute("aria-label", `${w.word}, at ${w.start.toFixed(2)} seconds`);
        return button;
      }),
    );
    ui.noWords.hidden = words.length > 0;
    ui.player.hidden = !audioUrl;
    if (audioUrl) {
      ui.player.src = audioUrl;
      ui.player.load();
    } else {
      ui.player.removeAttribute("src");
    }
    ui.result.hidden = false;
  }

  function playFrom(seconds) {
    const player = ui.player;
    if (!player.src) return;
    const seek = () => {
      player.currentTime = seconds;
      const playing = player.play();
      if (playing && playing.catch) {
        playing.catch((err) => {
          if (err.name !== "AbortError") showError(`The audio could not be played: ${err.message}`);
        });
      }
    };
    if (player.readyState >= 1) seek();
    else player.addEventListener("loadedmetadata", seek, { once: true });
  }

  ui.words.addEventListener("click", (event) => {
    const button = event.target.closest("button.word");
    if (button) playFrom(Number(button.dataset.start));
  });

  // Highlight the word being played.
  ui.player.addEventListener("timeupdate", () => {
    const t = ui.player.currentTime;
    for (const button of ui.words.children) {
      const on = Number(button.dataset.start) <= t && t < Number(button.dataset.end);
      button.classList.toggle("playing", on);
      if (on) button.setAttribute("aria-current", "true");
      else button.removeAttribute("aria-current");
    }
  });

  function download(kind) {
    if (!current) return;
    const words = current.data.words || [];
    const files = {
      srt: [toSrt(words), "application/x-subrip"],
      vtt: [toVtt(words), "text/vtt"],
      json: [`${JSON.stringify(current.data, null, 2)}\n`, "application/json"],
    };
    const [content, type] = files[kind];
    const url = URL.createObjectURL(new Blob([content], { type: `${type};charset=utf-8` }));
    const link = document.createElement("a");
    link.href = url;
    link.download = `${current.name}.${kind}`;
    link.hidden = true;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }

  for (const button of document.querySelectorAll("[data-download]")) {
    button.addEventListener("click", () => download(button.dataset.download));
  }

  // ---------------------------------------------------------------- live transcript: utterances, then the partial

  // The server cuts a stream into utterances at pauses. An "utterance" message is finished text: it joins the
  // list for good. A "partial" is only the utterance in progress (it starts afresh after each utterance), so it
  // replaces the line after the list instead of everything. The list is the polite live region; the partial line
  // is not one, or a screen reader would read out every change to it.

  function clearLive() {
    ui.utterances.replaceChildren();
    ui.partial.textContent = "";
    markLiveEmpty();
  }

  // "Nothing yet." (CSS) only while there is neither a finished utterance nor a partial.
  function markLiveEmpty() {
    ui.liveTranscript.classList.toggle("empty", !ui.utterances.children.length && !ui.partial.textContent);
  }

  function showPartial(text) {
    ui.partial.textContent = text;
    markLiveEmpty();
  }

  function addUtterance(r, utterance) {
    log.utterances.push(utterance);
    r.utterances.push(utterance);
    const item = document.createElement("li");
    item.className = "utterance";
    const time = document.createElement("span");
    time.className = "utterance-time";
    time.textContent = shortClock(utterance.start);
    const text = document.createElement("span");
    text.className = "utterance-text";
    text.textContent = utterance.text;
    item.append(time, " ", text);
    ui.utterances.append(item);
    showPartial(""); // the partial was this utterance; the next one's partials start from nothing
  }

  // ---------------------------------------------------------------- live: microphone → websocket /stream

  let rec = null; // the recording in progress
  let recordState = "idle"; // idle | starting | recording | finishing

  function setRecordState(state, status) {
    recordState = state;
    const busy = state === "starting" || state === "finishing";
    ui.record.setAttribute("aria-disabled", String(busy));
    ui.record.classList.toggle("recording", state === "recording");
    ui.recordLabel.textContent = state === "recording" ? "Stop recording" : state === "idle" ? "Start recording" : state === "starting" ? "Starting…" : "Finishing…";
    if (status !== undefined) ui.recordStatus.textContent = status;
    if (state !== "recording") ui.level.style.width = "0%";
  }

  function streamUrl() {
    const url = new URL("stream", window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    if (apiKey) url.searchParams.set("api_key", apiKey);
    return url.href;
  }

  function openSocket() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(streamUrl());
      ws.binaryType = "arraybuffer";
      ws.onopen = () => resolve(ws);
      ws.onerror = () => reject(new Error("could not connect to the streaming endpoint"));
    });
  }

  function releaseAudio(r) {
    if (r.source) r.source.disconnect();
    if (r.node) {
      r.node.port.onmessage = null;
      r.node.disconnect();
    }
    if (r.stream) r.stream.getTracks().forEach((t) => t.stop());
    if (r.ctx && r.ctx.state !== "closed") r.ctx.close().catch(() => {});
    r.source = r.node = r.stream = r.ctx = null;
  }

  function finishRecording(r, status) {
    releaseAudio(r);
    clearTimeout(r.finalTimer);
    if (rec === r) rec = null;
    setRecordState("idle", status);
  }

  function onStreamMessage(r, event) {
    if (typeof event.data !== "string") return;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      showError("The server sent a message that is not JSON.");
      return;
    }
    if (message.type === "partial") {
      log.partials.push(message.text);
      showPartial(message.text);
    } else if (message.type === "utterance") {
      const { type, ...utterance } = message;
      addUtterance(r, utterance);
    } else if (message.type === "final") {
      log.finals.push(message);
      r.gotFinal = true;
      // eof ended the last utterance (null: a pause had already ended it, and it came as a message).
      if (message.utterance) addUtterance(r, message.utterance);
      showPartial("");
      const { type, ...data } = message;
      const audioUrl = r.chunks.length ? URL.createObjectURL(wavBlob(r.chunks, r.rate)) : null;
      showResult("recording", "From the microphone", data, audioUrl, r.utterances);
      finishRecording(r, `Done: ${(message.words || []).length} words in ${Number(message.duration || 0).toFixed(1)} s.`);
    } else if (message.type === "error") {
      showError(`The server reported a problem with the stream: ${message.message} (${message.code})`);
    }
  }

  async function startRecording() {
    clearError();
    if (!window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      showError("The browser allows the microphone only on secure pages: open this page over https, or on localhost.");
      return;
    }
    if (typeof AudioWorkletNode === "undefined") {
      showError("This browser cannot capture audio here (no AudioWorklet). Use a current Chromium or Firefox.");
      return;
    }
    setRecordState("starting", "Asking for the microphone…");
    const r = { chunks: [], samples: 0, utterances: [], gotFinal: false, stopping: false };
    rec = r;
    try {
      r.stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: true },
      });
    } catch (err) {
      showError(micErrorMessage(err));
      finishRecording(r, "Ready.");
      return;
    }
    try {
      r.ctx = new AudioContext();
      const contextRate = r.ctx.sampleRate;
      r.rate = contextRate >= MIN_RATE && contextRate <= MAX_RATE ? Math.round(contextRate) : FALLBACK_RATE;
      await r.ctx.audioWorklet.addModule("static/capture-worklet.js");
      setRecordState("starting", "Connecting to the server…");
      r.ws = await openSocket();
    } catch (err) {
      showError(`Could not start streaming: ${err.message}`);
      finishRecording(r, "Ready.");
      return;
    }
    if (rec !== r) return; // stopped meanwhile
    const ws = r.ws;
    clearLive(); // the last recording's transcript goes before this one's first message can arrive
    ws.onmessage = (event) => onStreamMessage(r, event);
    ws.onclose = (event) => {
      if (r.gotFinal) return;
      if (rec === r) {
        showError(
          `The connection to the server closed before the transcript was finished (code ${event.code}${event.reason ? `: ${event.reason}` : ""}).`,
        );
        finishRecording(r, "Stopped.");
      }
    };
    ws.send(JSON.stringify({ type: "config", sample_rate: r.rate }));

    r.node = new AudioWorkletNode(r.ctx, "capture-processor", {
      numberOfInputs: 1,
      numberOfOutputs: 1,
      outputChannelCount: [1],
      processorOptions: { outRate: r.rate, frameSeconds: FRAME_SECONDS },
    });
    r.node.port.onmessage = (event) => {
      const message = event.data;
      if (message.type === "frame") {
        const pcm = new Int16Array(message.pcm);
        r.chunks.push(pcm);
        r.samples += pcm.length;
        if (ws.readyState === WebSocket.OPEN) ws.send(message.pcm);
        if (!r.stopping) {
          ui.level.style.width = `${Math.min(100, Math.round(Math.sqrt(message.peak) * 100))}%`;
          ui.recordStatus.textContent = `Recording… ${clock(r.samples / r.rate)} sent.`;
        }
      } else if (message.type === "flushed") {
        releaseAudio(r);
        if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "eof" }));
      }
    };
    r.source = r.ctx.createMediaStreamSource(r.stream);
    r.source.connect(r.node);
    r.node.connect(r.ctx.destination); // the processor outputs silence; connected so every browser runs it
    if (r.ctx.state === "suspended") await r.ctx.resume();
    setRecordState("recording", "Recording… speak now.");
  }

  function stopRecording() {
    const r = rec;
    if (!r || r.stopping) return;
    r.stopping = true;
    setRecordState("finishing", "Finishing the transcript…");
    if (r.node) r.node.port.postMessage("flush"); // the worklet sends what it holds, then "flushed" → eof
    r.finalTimer = setTimeout(() => {
      if (!r.gotFinal && rec === r) {
        showError("The server did not send the final transcript in time.");
        if (r.ws) r.ws.close();
        finishRecording(r, "Stopped.");
      }
    }, FINAL_TIMEOUT_MS);
  }

  ui.record.addEventListener("click", () => {
    if (recordState === "idle") startRecording();
    else if (recordState === "recording") stopRecording();
  });

  // ---------------------------------------------------------------- files: drop or pick → POST /transcribe

  let uploading = false;

  async function transcribeFile(file) {
    if (uploading) return;
    clearError();
    uploading = true;
    ui.dropZone.classList.add("busy");
    ui.fileStatus.textContent = `Transcribing ${file.name}…`;
    const form = new FormData();
    form.append("file", file, file.name);
    try {
      let response;
      try {
        response = await fetch("transcribe", { method: "POST", body: form, headers: authHeaders({ Accept: "application/json" }) });
      } catch (err) {
        throw new Error(`Could not reach the server (${err.message}).`);
      }
      let body = null;
      try {
        body = await response.json();
      } catch {
        body = null;
      }
      if (!response.ok) {
        throw new Error(`The server could not transcribe ${file.name}: ${detailText(body, response)} (HTTP ${response.status}).`);
      }
      if (!body || typeof body.text !== "string") throw new Error("The server's answer was not a transcript.");
      log.transcriptions.push(body);
      const name = file.name.replace(/\.[^.]+$/, "") || "transcript";
      showResult(name, file.name, body, URL.createObjectURL(file), body.utterances);
      ui.fileStatus.textContent = `Transcribed ${file.name}: ${body.words.length} words.`;
    } catch (err) {
      ui.fileStatus.textContent = "";
      showError(err.message);
    } finally {
      uploading = false;
      ui.dropZone.classList.remove("busy");
    }
  }

  ui.fileInput.addEventListener("change", () => {
    const file = ui.fileInput.files && ui.fileInput.files[0];
    if (file) transcribeFile(file);
    ui.fileInput.value = ""; // picking the same file again transcribes it again
  });

  ui.dropZone.addEventListener("dragover", (event) => {
    event.preventDefault();
    if (event.dataTransfer) event.dataTransfer.dropEffect = "copy";
    ui.dropZone.classList.add("over");
  });
  ui.dropZone.addEventListener("dragleave", () => ui.dropZone.classList.remove("over"));
  ui.dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    ui.dropZone.classList.remove("over");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) transcribeFile(file);
    else showError("Drop an audio file (nothing was dropped that the browser could read as a file).");
  });
  // A file dropped beside the drop zone must not navigate away from the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());

  loadInfo();
})();
