// The torrent-patron page: torrents pushed by the server (server-sent events, woken by the
// broker's board), actions through the JSON API. Every text from a torrent is put in with
// textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const rows = new Map(); // id -> { element, torrent }

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i === 0 ? `${n} B` : `${n.toFixed(1)} ${units[i]}`;
}

function duration(s) {
  if (s == null) return "–";
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: body === undefined ? {} : { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  const text = await response.text();
  let value = null;
  try { value = text ? JSON.parse(text) : null; } catch (_) { value = { message: text }; }
  if (!response.ok) {
    if (response.status === 401) showLogin();
    throw new Error((value && value.message) || `${response.status} ${response.statusText}`);
  }
  return value;
}

// ---- signing in: the URL's #token=... becomes a cookie, and leaves the address bar.
async function signIn(token) {
  await api("POST", "/api/login", { token });
  history.replaceState(null, "", location.pathname);
  $("login").hidden = true;
  follow();
}

function showLogin() {
  $("login").hidden = false;
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("login-error").textContent = "";
  try { await signIn($("token").value.trim()); } catch (e) { $("login-error").textContent = e.message; }
});

// ---- the list, kept up to date by the server's events.
let source = null;
function follow() {
  if (source) source.close();
  source = new EventSource("/api/events");
  source.onmessage = (message) => {
    const news = JSON.parse(message.data);
    if (news.event === "torrents") {
      for (const id of [...rows.keys()]) remove(id);
    }
    for (const torrent of news.torrents) show(torrent);
    for (const id of news.gone) remove(id);
    const broker = $("broker");
    broker.textContent = news.broker_down ? `No broker: ${news.broker_down}` : "";
    broker.classList.toggle("down", Boolean(news.broker_down));
    $("empty").hidden = rows.size > 0;
    $("count").textContent = rows.size ? `(${rows.size})` : "";
  };
  source.onerror = async () => {
    // 401 (no cookie yet) closes the stream: ask for the token.
    if (source.readyState === EventSource.CLOSED) {
      try { await api("GET", "/api/torrents"); follow(); } catch (_) { /* showLogin ran */ }
    }
  };
}

function remove(id) {
  const row = rows.get(id);
  if (row) { row.element.remove(); rows.delete(id); }
}

function show(torrent) {
  let row = rows.get(torrent.id);
  if (!row) {
    const element = $("torrent-row").content.firstElementChild.cloneNode(true);
    row = { element, torrent };
    rows.set(torrent.id, row);
    element.dataset.id = torrent.id;
    element.querySelector(".actions").addEventListener("click", (event) => {
      const button = event.target.closest("button");
      if (button) act(row, button.dataset.act);
    });
    // In id order.
    const after = [...rows.keys()].filter((id) => id > torrent.id).sort((a, b) => a - b)[0];
    $("torrents").insertBefore(element, after === undefined ? null : rows.get(after).element);
  }
  row.torrent = torrent;
  const e = row.element;
  e.querySelector(".id").textContent = torrent.id;
  e.querySelector(".name").textContent = torrent.name;
  const state = e.querySelector(".state");
  state.textContent = torrent.state;
  state.classList.toggle("error", torrent.state === "error");
  e.querySelector("progress").value = torrent.progress;
  e.querySelector("progress").setAttribute("aria-label", `${torrent.name}: ${(torrent.progress * 100).toFixed(1)}%`);
  const peers = torrent.peers === 1 ? "1 peer" : `${torrent.peers} peers`;
  e.querySelector(".figures").textContent =
    `${(torrent.progress * 100).toFixed(1)}% of ${bytes(torrent.bytes_total)} · ↓ ${bytes(torrent.download_rate)}/s · ↑ ${bytes(torrent.upload_rate)}/s · ${peers}` +
    (torrent.complete ? "" : ` · eta ${duration(torrent.eta_secs)}`) +
    (torrent.error ? ` · ${torrent.error}` : "") +
    (torrent.state === "queued" ? ` · #${torrent.queue_position} in the queue` : "") +
    (torrent.labels && torrent.labels.length ? ` · ${torrent.labels.join(", ")}` : "");
  e.querySelector("[data-act=pause]").hidden = torrent.state === "paused";
  e.querySelector("[data-act=resume]").hidden = torrent.state !== "paused" && torrent.state !== "error";
  e.querySelector("[data-act=top]").hidden = torrent.state !== "queued";
}

// ---- actions, each with its error shown on its own torrent.
async function act(row, action) {
  const id = row.torrent.id;
  const error = row.element.querySelector(".error");
  error.textContent = "";
  try {
    if (action === "files") return await showFiles(row);
    if (action === "peers") return await showPeers(row);
    if (action === "close") return await confirmClose(row);
    if (action === "place") return showPlace(row);
    await api("POST", `/api/torrents/${id}/${action}`);
  } catch (e) {
    error.textContent = e.message;
  }
}

// Where it is and how it is labelled: a folder to move it to, its labels to set.
function showPlace(row) {
  const id = row.torrent.id;
  const detail = row.element.querySelector(".detail");
  detail.replaceChildren();
  const form = (label, value, button, send) => {
    const f = document.createElement("form");
    const l = document.createElement("label");
    l.textContent = label + " ";
    const input = document.createElement("input");
    input.value = value;
    l.appendChild(input);
    const b = document.createElement("button");
    b.textContent = button;
    f.append(l, b);
    f.addEventListener("submit", async (event) => {
      event.preventDefault();
      const error = row.element.querySelector(".error");
      error.textContent = "";
      try { await send(input.value); detail.replaceChildren(); }
      catch (e) { error.textContent = e.message; }
    });
    return f;
  };
  detail.append(
    form("Move to folder", row.torrent.save_folder || "", "Move",
      (to) => api("POST", `/api/torrents/${id}/move`, { to })),
    form("Labels (comma-separated)", (row.torrent.labels || []).join(", "), "Set",
      (text) => api("POST", `/api/torrents/${id}/labels`,
        { labels: text.split(",").map((l) => l.trim()).filter((l) => l) })),
  );
}

async function showFiles(row) {
  const id = row.torrent.id;
  const list = await api("GET", `/api/torrents/${id}/files`);
  const detail = row.element.querySelector(".detail");
  detail.replaceChildren();
  const form = document.createElement("form");
  const table = document.createElement("table");
  const head = table.insertRow();
  for (const title of ["get", "file", "done", "size"]) {
    const th = document.createElement("th");
    th.textContent = title;
    head.appendChild(th);
  }
  for (const file of list.files) {
    const tr = table.insertRow();
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = file.selected;
    box.value = file.index;
    box.setAttribute("aria-label", `download ${file.path}`);
    tr.insertCell().appendChild(box);
    const link = document.createElement("a");
    link.href = `/files/${id}/${file.index}`;
    link.textContent = file.path;
    const name = tr.insertCell();
    name.appendChild(link);
    const media = /\.(mp4|m4v|webm|ogv|mkv|mp3|m4a|ogg|oga|opus|flac|wav)$/i.exec(file.path);
    if (media) {
      const play = document.createElement("button");
      play.type = "button";
      play.textContent = "Play";
      play.addEventListener("click", () => {
        const audio = /mp3|m4a|ogg|oga|opus|flac|wav/i.test(media[1]);
        const player = document.createElement(audio ? "audio" : "video");
        player.controls = true;
        player.src = link.href;
        name.appendChild(player);
        player.play().catch(() => {});
      });
      name.appendChild(play);
    }
    tr.insertCell().textContent = file.size ? `${((file.bytes_done / file.size) * 100).toFixed(0)}%` : "100%";
    tr.insertCell().textContent = bytes(file.size);
  }
  form.appendChild(table);
  const save = document.createElement("button");
  save.textContent = "Download the checked files";
  form.appendChild(save);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const only = [...form.querySelectorAll("input:checked")].map((b) => Number(b.value));
    const error = row.element.querySelector(".error");
    error.textContent = "";
    try { await api("POST", `/api/torrents/${id}/files`, { only }); await showFiles(row); }
    catch (e) { error.textContent = e.message; }
  });
  detail.appendChild(form);
}

async function showPeers(row) {
  const list = await api("GET", `/api/torrents/${row.torrent.id}/peers`);
  const detail = row.element.querySelector(".detail");
  detail.replaceChildren();
  if (!list.peers.length) {
    detail.textContent = "No connected peers.";
    return;
  }
  const table = document.createElement("table");
  for (const peer of list.peers) {
    const tr = table.insertRow();
    tr.insertCell().textContent = peer.address;
    tr.insertCell().textContent = peer.client || "";
    tr.insertCell().textContent = `↓ ${bytes(peer.download_rate)}/s ↑ ${bytes(peer.upload_rate)}/s`;
    tr.insertCell().textContent = peer.progress == null ? "" : `${(peer.progress * 100).toFixed(0)}%`;
  }
  detail.appendChild(table);
}

function confirmClose(row) {
  const dialog = $("confirm");
  $("confirm-text").textContent = `Close torrent ${row.torrent.id} (${row.torrent.name})? It stops for every program using it.`;
  $("confirm-delete").checked = false;
  dialog.onclose = async () => {
    if (dialog.returnValue !== "ok") return;
    const error = row.element.querySelector(".error");
    try {
      await api("POST", `/api/torrents/${row.torrent.id}/close`, { delete_data: $("confirm-delete").checked });
    } catch (e) { error.textContent = e.message; }
  };
  dialog.showModal();
}

// ---- adding: a chosen or dropped .torrent, or a magnet.
let chosen = null;
$("add-file").addEventListener("change", (event) => { chosen = event.target.files[0] || null; });
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  chosen = event.dataTransfer.files[0] || null;
  if (chosen) $("drop-help").textContent = chosen.name;
});

function base64(buffer) {
  let text = "";
  const view = new Uint8Array(buffer);
  for (let i = 0; i < view.length; i += 0x8000) text += String.fromCharCode(...view.subarray(i, i + 0x8000));
  return btoa(text);
}

$("add-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const error = $("add-error");
  error.textContent = "";
  const magnet = $("add-magnet").value.trim();
  const body = { paused: $("add-paused").checked };
  const output = $("add-output").value.trim();
  if (output) body.output = output;
  try {
    if (magnet) body.magnet = magnet;
    else if (chosen) body.torrent_base64 = base64(await chosen.arrayBuffer());
    else throw new Error("choose or drop a .torrent file, or paste a magnet link");
    await api("POST", "/api/torrents", body);
    $("add-form").reset();
    chosen = null;
    $("drop-help").textContent = "or drop one here";
  } catch (e) {
    error.textContent = e.message;
  }
});

// ---- the broker's settings: rate limits, the queue, when seeding stops.
const kib = (bytes) => (bytes == null ? "" : String(Math.round(bytes / 1024)));
async function showSettings() {
  const s = await api("GET", "/api/settings");
  $("set-down").value = kib(s.max_download_rate);
  $("set-up").value = kib(s.max_upload_rate);
  $("set-alt").checked = s.alt_on;
  $("set-alt-rates").textContent = s.alt_download_rate == null && s.alt_upload_rate == null
    ? "none set" : `↓ ${bytes(s.alt_download_rate ?? 0)}/s · ↑ ${bytes(s.alt_upload_rate ?? 0)}/s`;
  $("set-downloads").value = s.max_active_downloads ?? "";
  $("set-seeds").value = s.max_active_seeds ?? "";
  $("set-ratio").value = s.ratio_limit ?? "";
  $("settings-form").dataset.loaded = "yes";
}
$("settings").addEventListener("toggle", () => {
  if ($("settings").open) showSettings().catch((e) => { $("settings-error").textContent = e.message; });
});
$("settings-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const error = $("settings-error");
  error.textContent = "";
  // An empty field is "none"; a number is taken as typed.
  const number = (id, scale = 1) => {
    const text = $(id).value.trim();
    if (text === "") return null;
    const n = Number(text);
    if (!Number.isFinite(n) || n < 0) throw new Error(`${text} is not a number`);
    return Math.round(n * scale);
  };
  try {
    const ratio = $("set-ratio").value.trim();
    await api("POST", "/api/settings", {
      max_download_rate: number("set-down", 1024) || null,
      max_upload_rate: number("set-up", 1024) || null,
      alt_on: $("set-alt").checked,
      max_active_downloads: number("set-downloads"),
      max_active_seeds: number("set-seeds"),
      ratio_limit: ratio === "" ? null : Number(ratio),
    });
    await showSettings();
  } catch (e) {
    error.textContent = e.message;
  }
});

// ---- start.
const token = new URLSearchParams(location.hash.slice(1)).get("token");
if (token) signIn(token).catch((e) => { showLogin(); $("login-error").textContent = e.message; });
else follow();
